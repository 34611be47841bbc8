"""The kl probe on the tiny random Llama: zero against itself, positive after pruning, the bounded dense
store against full-logit KL, the store's size, its units, a bare model as its own reference, cancel."""

import pytest
import torch

from tests.conftest import make_engine
from tests.tiny import tiny_llama
from workbench.domain.plan import Plan
from workbench.infra.errors import Cancelled
from workbench.probes import CHUNK, PROBES, ProbeContext, kl, run_probes
from workbench.probes.heldout import BATCH, SEQLEN, token_pass

QUICK_TOKENS = 2 * (SEQLEN - 1)


@pytest.fixture(scope="module")
def probed():
    """An engine's kl (and perplexity) results: dense, then Wanda 50%; the store after each."""
    engine = make_engine()
    dense = {r.name: r for r in engine.probe(["kl", "perplexity"])}
    stores = list(engine.prober.topks)
    engine.prune(Plan(method="wanda", sparsity=0.5))
    pruned = {r.name: r for r in engine.probe(["kl", "perplexity"])}
    return engine, dense, stores, pruned


def test_dense_model_against_itself_is_zero(probed):
    _, dense, stores, _ = probed
    result = dense["kl"]
    assert len(stores) == 1 and result.details["reference"] == "dense"  # measured against the store, not skipped
    assert result.score == 0.0 and result.details["max"] == 0.0
    assert result.details["top1"] == 1.0
    assert result.details["tokens"] == QUICK_TOKENS and result.details["k"] == kl.TOP_K
    assert not result.higher_is_better and result.floor == 0.0


def test_pruning_raises_kl_and_reuses_the_store(probed):
    engine, _, stores, pruned = probed
    result = pruned["kl"]
    assert result.score > 0 and result.details["top1"] < 1.0
    d = result.details
    assert 0 <= d["median"] <= d["p90"] <= d["p95"] <= d["p99"] <= d["p99.9"] <= d["max"]
    assert engine.prober.topks == stores and engine.prober.topks[0] is stores[0]  # computed once per engine
    assert result.tolerance == pytest.approx(0.066) and result.relative


def test_store_built_mid_run_equals_the_dense_references(probed):
    """A store computed while the pruned model is in (dense weights swapped in and back) gives the same
    KL, and leaves the pruned model as it was."""
    _, _, _, pruned = probed
    engine = make_engine()
    engine.prune(Plan(method="wanda", sparsity=0.5))
    engine.dense_probes["kl"] = pruned["kl"]  # a dense reference known, its store not: built on demand
    assert engine.prober.topks == []
    now = {r.name: r for r in engine.probe(["kl", "perplexity"])}
    assert len(engine.prober.topks) == 1
    assert now["kl"].score == pruned["kl"].score
    assert now["perplexity"].score == pruned["perplexity"].score


def test_store_holds_windows_by_tokens_by_k_entries(probed):
    _, _, [store], _ = probed
    assert store.logprobs.shape == store.ids.shape == (2, SEQLEN - 1, kl.TOP_K)
    assert store.tail.shape == (2, SEQLEN - 1)
    assert store.logprobs.dtype == torch.float32 and store.ids.dtype == torch.int32
    assert store.logprobs.device.type == "cpu"
    assert (store.logprobs.diff(dim=-1) <= 0).all()  # descending: the dense top-1 first
    vocab = 512
    kept = store.logprobs.numel() + store.ids.numel() + store.tail.numel()
    assert kept == 2 * (SEQLEN - 1) * (2 * kl.TOP_K + 1) < 2 * (SEQLEN - 1) * vocab


def test_units_recompute_the_score(probed):
    """Chunks of 32 predicted tokens per window (the last 31), weighted by their token counts. Score and
    units sum the same float32 token values in float64 in another order: rounding <= tokens x 2^-53
    relative, far below 1e-12."""
    _, _, _, pruned = probed
    result = pruned["kl"]
    units, top1 = result.units["score"], result.units["top1"]
    assert units.weights == [float(CHUNK)] * 7 + [31.0] + [float(CHUNK)] * 7 + [31.0]
    assert units.link == "mean" and sum(units.weights) == QUICK_TOKENS
    assert units.score() == pytest.approx(result.score, rel=1e-12)
    assert top1.score() == pytest.approx(result.details["top1"], rel=1e-12)
    assert all(v == int(v) and 0 <= v <= w for v, w in zip(top1.values, top1.weights))


def full_kl_and_tail_term(dense, current, windows, top_ids):
    """In float64 from full logits (computed on the probe's batches): the full token KL(dense || current)
    and the term the store leaves out, p_T * KL(p_tail / p_T || q_tail / q_T)."""
    fulls, tails = [], []
    for start in range(0, len(windows), BATCH):
        rows = slice(start, start + BATCH)
        with torch.no_grad():
            p = torch.log_softmax(dense(windows[rows]).logits[:, :-1].double(), -1)
            q = torch.log_softmax(current(windows[rows]).logits[:, :-1].double(), -1)
        fulls.append((p.exp() * (p - q)).sum(-1))
        outside = torch.ones_like(p, dtype=torch.bool).scatter_(-1, top_ids[rows].long(), False)
        p_tail = torch.where(outside, p, -torch.inf).logsumexp(-1)
        q_tail = torch.where(outside, q, -torch.inf).logsumexp(-1)
        shapes = torch.where(outside, p.exp() * ((p - p_tail[..., None]) - (q - q_tail[..., None])), 0.0).sum(-1)
        tails.append(torch.where(p_tail == -torch.inf, 0.0, shapes))
    return torch.cat(fulls), torch.cat(tails)


def sharp_models():
    """Two different tiny Llamas with peaked next-token distributions (final norm x 8), so that the top k
    leave a tail of real mass whose shapes differ."""
    models = []
    for seed in (0, 1):
        model, _ = tiny_llama(seed=seed)
        model.model.norm.weight.data *= 8
        models.append(model)
    return models


@pytest.mark.parametrize("k", [8, 512])
def test_store_kl_is_full_kl_minus_the_tail_term(k):
    """KL from the top-k store = full KL - p_T KL(p_tail/p_T || q_tail/q_T); with k = the vocabulary
    (512), the full KL. The probe works in float32 on the same float32 logits the float64 reference reads
    (same batches): log-probabilities here reach -17 nats, float32 unit roundoff is 6e-8, so each is off
    by at most about 1e-6 and the p-weighted sums of differences by a few times that; 2e-5 absolute bounds
    it with margin (the largest difference seen is 2e-6), against token KLs of 0.4 to 6.3 and tail terms
    up to 4.5."""
    dense, current = sharp_models()
    windows = torch.randint(0, 256, (5, 40), generator=torch.Generator().manual_seed(0))  # two batches
    with torch.no_grad():
        store = kl.dense_topk(dense, windows, torch.device("cpu"), k=k)
        measured = token_pass(current, windows, torch.device("cpu"), store)
        bounded, agree = measured.kl, measured.agree
    full, tail_term = full_kl_and_tail_term(dense, current, windows, store.ids)
    assert store.k == k and bounded.shape == (5, 39)
    assert (tail_term >= -1e-12).all()  # the store's KL is a lower bound
    if k < 512:
        assert tail_term.max() > 0.05  # the tail term is real here, so the identity is tested
    else:
        assert (store.tail == -torch.inf).all() and (tail_term == 0).all()
    assert torch.allclose(bounded.double(), full - tail_term, rtol=0, atol=2e-5)
    with torch.no_grad():
        top1 = torch.cat([current(windows[s : s + BATCH]).logits[:, :-1].argmax(-1) for s in range(0, 5, BATCH)])
    assert torch.equal(agree, top1 == store.ids[..., 0])
    assert 0 < agree.float().mean() < 1


def test_a_bare_model_is_its_own_reference():
    model, tokenizer = tiny_llama(seed=0)
    [result] = run_probes(ProbeContext(model, tokenizer, torch.device("cpu")), ["kl"])
    assert result.score == 0.0 and result.details["top1"] == 1.0 and result.details["reference"] == "self"
    assert result.details["tokens"] == QUICK_TOKENS and result.units["score"].score() == 0.0
    assert result.units["top1"].score() == 1.0


def test_cancel_between_batches():
    model, tokenizer = tiny_llama(seed=0)
    store = kl.dense_topk(model, torch.zeros(2, 8, dtype=torch.long), torch.device("cpu"))
    ctx = ProbeContext(model, tokenizer, torch.device("cpu"), cancel=lambda: True, dense_topk=lambda windows: store)
    with pytest.raises(Cancelled):
        PROBES.get("kl")().run(ctx)
    with pytest.raises(Cancelled):
        kl.dense_topk(model, torch.zeros(2, 8, dtype=torch.long), torch.device("cpu"), check_cancel=ctx.check_cancel)


def test_perplexity_and_kl_in_one_run_share_one_forward_pass(probed):
    engine, _, _, pruned = probed
    calls = []
    handle = engine.loaded.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        together = {r.name: r for r in engine.probe(["perplexity", "kl"])}
        shared = len(calls)
        alone = {name: engine.probe([name])[0] for name in ("perplexity", "kl")}
    finally:
        handle.remove()
    batches = -(-2 // BATCH)  # the quick windows, in batches
    assert shared == batches and len(calls) == 3 * batches  # once together, once each alone
    for name in ("perplexity", "kl"):
        assert together[name].score == alone[name].score == pruned[name].score
        assert together[name].units["score"].values == alone[name].units["score"].values
