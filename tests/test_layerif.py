"""LayerIF: block-at-a-time per-example gradients, DataInf, the allocator's map, and its wiring."""

import itertools
import json

import numpy as np
import pytest
import torch

from tests.conftest import make_engine
from tests.tiny import tiny_llama
from workbench.allocators import ALLOCATORS, InfluenceSpec
from workbench.allocators.layerif import AGGREGATES, ESTIMATORS, SCOPES, linear_map
from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.engine.gradients import (LinearGrams, block_gradients, block_influence, datainf, dot_product,
                                 gradient_grams, mean_abs_gradients, notebook_totals)
from workbench.domain.plan import Plan
from workbench.engine.gradients import AGGREGATES as AGGREGATE_FNS
from workbench.engine.gradients import ESTIMATORS as ESTIMATOR_FNS
from workbench.engine.gradients import SCOPES as SCOPE_KINDS
from workbench.model.data import disjoint_starts
from workbench.model.layout import find_linears

CPU = torch.device("cpu")
SMALL = {"train": 4, "val": 2, "seqlen": 16}  # influence windows for the tiny model


def _autograd_per_example(model, ids, kinds) -> list[list[torch.Tensor]]:
    """Per example, per block: the weight gradients of `kinds` from a full-model backward of its own loss."""
    linears = find_linears(model)
    model.requires_grad_(True)
    out = []
    try:
        for row in ids:
            model.zero_grad()
            model(row[None], labels=row[None], use_cache=False).loss.backward()
            out.append([torch.cat([r.module.weight.grad.flatten() for r in block if r.kind in kinds]) for block in linears])
    finally:
        model.requires_grad_(False)
        model.zero_grad()
    return out


@pytest.mark.parametrize("scope", ["attention", "all"])
def test_block_gradients_equal_full_model_autograd(scope):
    model, _ = tiny_llama(seed=0)
    ids = torch.randint(0, 512, (10, 24), generator=torch.Generator().manual_seed(1))  # 10: two micro-batches
    expected = _autograd_per_example(model, ids, SCOPE_KINDS[scope])
    seen = []
    for b, grads in block_gradients(model, ids, CPU, SCOPE_KINDS[scope]):
        seen.append(b)
        got = torch.cat(grads, 1)
        for i in range(len(ids)):
            torch.testing.assert_close(got[i], expected[i][b], rtol=1e-4, atol=1e-6)
    assert seen == [3, 2, 1, 0]
    assert all(not p.requires_grad for p in model.parameters())


def test_mean_abs_gradients_is_the_per_example_mean():
    model, _ = tiny_llama(seed=0)
    ids = torch.randint(0, 512, (3, 20), generator=torch.Generator().manual_seed(2))
    expected = _autograd_per_example(model, ids, SCOPE_KINDS["attention"])
    means = mean_abs_gradients(model, ids, CPU)
    for b, mean in enumerate(means):
        assert mean == pytest.approx(torch.stack([e[b] for e in expected]).abs().mean().item(), rel=1e-5)
    with pytest.raises(WorkbenchError, match="unknown scope"):
        mean_abs_gradients(model, ids, CPU, scope="mlp")


def _grams(train: torch.Tensor, val: torch.Tensor) -> LinearGrams:
    return LinearGrams(train @ train.T, val @ train.T, train.shape[1])


def test_datainf_matches_the_direct_formula():
    gen = torch.Generator().manual_seed(3)
    g, v = torch.randn(5, 12, generator=gen, dtype=torch.float64), torch.randn(3, 12, generator=gen, dtype=torch.float64)
    lam = (g ** 2).mean(1).mean() / 10
    # DataInf: the average of the per-example damped inverses (g g^T + lam I)^-1, applied to each v_j
    inverse = torch.stack([torch.linalg.inv(torch.outer(gi, gi) + lam * torch.eye(12, dtype=torch.float64)) for gi in g]).mean(0)
    torch.testing.assert_close(datainf(_grams(g, v)), -(v @ inverse) @ g.T)
    # and the formula as written: H^-1 v ~ 1/(n lam) sum_i [v - (v . g_i) / (lam + ||g_i||^2) g_i]
    hvp = torch.stack([sum(vj - (vj @ gi) / (lam + gi @ gi) * gi for gi in g) / (len(g) * lam) for vj in v])
    torch.testing.assert_close(datainf(_grams(g, v)), -hvp @ g.T)
    torch.testing.assert_close(dot_product(_grams(g, v)), -v @ g.T)


def test_block_influence_sums_linears_then_aggregates():
    gen = torch.Generator().manual_seed(4)
    block = [_grams(torch.randn(4, 6, generator=gen, dtype=torch.float64), torch.randn(2, 6, generator=gen, dtype=torch.float64))
             for _ in range(2)]
    pairs = datainf(block[0]) + datainf(block[1])
    assert block_influence([block], "datainf", "all") == [pytest.approx(pairs.sum().item())]
    assert block_influence([block], "datainf", "pairwise-positive") == [pytest.approx(pairs.clamp(min=0).sum().item())]
    assert block_influence([block], "datainf", "positive-totals") == [pytest.approx(pairs.sum(0).clamp(min=0).sum().item())]
    assert block_influence([block], "identity", "all") == [pytest.approx((-block[0].cross - block[1].cross).sum().item())]


# Influence matrices of three blocks (validation x training; integers, so every sum is exact). Per training
# example (column) over the validation set: A totals 6 and -6 (large pairs of both signs), B 1 and 1, C 2 and 2.
BLOCK_A = [[3.0, -3.0], [3.0, -3.0]]
BLOCK_B = [[5.0, -4.0], [-4.0, 5.0]]
BLOCK_C = [[1.0, 1.0], [1.0, 1.0]]


def _identity_blocks(*influences) -> list[list[LinearGrams]]:
    """Blocks of one linear whose identity-estimator influence (-cross) is the given matrix."""
    return [[LinearGrams(torch.eye(2, dtype=torch.float64), -torch.tensor(m, dtype=torch.float64), 1)] for m in influences]


def test_aggregates_on_a_hand_made_influence_matrix_rank_as_the_paper():
    blocks = _identity_blocks(BLOCK_A, BLOCK_B, BLOCK_C)
    paper = block_influence(blocks, "identity", "positive-totals")
    assert paper == [6.0, 2.0, 4.0]  # the positive totals: A 6, B 1 + 1, C 2 + 2
    pairwise = block_influence(blocks, "identity", "pairwise-positive")
    assert pairwise == [6.0, 10.0, 4.0]  # every positive pair: A 3 + 3, B 5 + 5, C 1 + 1 + 1 + 1
    assert block_influence(blocks, "identity", "notebook") == [-6.0, 0.0, 0.0]
    assert block_influence(blocks, "identity", "all") == [0.0, 2.0, 4.0]
    targets = [linear_map(scores, [100] * 3, 0.6, 0.3) for scores in (paper, pairwise)]
    least_pruned_first = [sorted(range(3), key=t.__getitem__) for t in targets]
    assert least_pruned_first == [[1, 2, 0], [2, 0, 1]]  # the paper prunes B least, per-pair clamping most
    assert ALLOCATORS.get("layerif").defaults["aggregate"] == "positive-totals"


def test_notebook_aggregate_does_what_the_notebook_does():
    influence = torch.randint(-9, 10, (5, 7), generator=torch.Generator().manual_seed(5)).double()
    totals = influence.sum(0)
    assert (totals > 0).any() and (totals < 0).any()
    # expert_allocator.ipynb: rows are validation examples, columns training examples (pd.DataFrame of
    # {train_id: {val_id: value}}); the cell "Only positive IF Values" does, per layer:
    summed_vector = np.sum(influence.numpy(), axis=0, keepdims=True)
    remaining_values = np.delete(summed_vector, np.where(summed_vector > 0)[1])
    assert notebook_totals(influence) == np.sum(remaining_values)
    assert block_influence(_identity_blocks(influence.tolist()), "identity", "notebook") == [np.sum(remaining_values)]


@pytest.mark.parametrize("tokens, samples, seqlen", [(512, 32, 16), (1000, 7, 64), (130, 2, 64)])
def test_disjoint_starts_share_no_position(tokens, samples, seqlen):
    for seed in range(5):
        starts = sorted(disjoint_starts(tokens, samples, seqlen, seed))
        assert len(starts) == samples and starts[0] >= 0 and starts[-1] + seqlen <= tokens
        assert all(b - a >= seqlen for a, b in itertools.pairwise(starts))
    assert disjoint_starts(1000, 7, 64, 0) == disjoint_starts(1000, 7, 64, 0) != disjoint_starts(1000, 7, 64, 1)


def test_training_and_validation_windows_share_no_token_position(monkeypatch):
    import workbench.engine.signals
    import workbench.model.data

    monkeypatch.setattr(workbench.model.data, "token_stream", lambda tokenizer, source, part: torch.arange(512))  # id = position
    seen = []

    def recorded(model, train_ids, val_ids, *args):
        seen.append((train_ids, val_ids))
        return gradient_grams(model, train_ids, val_ids, *args)

    monkeypatch.setattr(workbench.engine.signals, "gradient_grams", recorded)
    engine = make_engine()
    engine.prepare(_plan(train=20, val=12, seqlen=16))  # 32 windows of 16: every slot of the 512 tokens
    train, val = seen[0]
    assert train.shape == (20, 16) and val.shape == (12, 16)
    assert not set(train.flatten().tolist()) & set(val.flatten().tolist())
    assert len(set(torch.cat([train, val]).flatten().tolist())) == 512  # no position in two windows at all
    with pytest.raises(WorkbenchError, match="too short: 512 tokens .* hold 32 disjoint windows of 16, 33 asked for"):
        engine.prepare(_plan(train=21, val=12, seqlen=16))


def test_allocator_choices_are_the_estimators_aggregates_and_scopes():
    assert set(ESTIMATORS) == set(ESTIMATOR_FNS) and set(AGGREGATES) == set(AGGREGATE_FNS) and set(SCOPES) == set(SCOPE_KINDS)


def test_linear_map_range_mean_cap_and_order():
    scores, numels = [3.0, -1.0, 7.0, 0.5], [100, 300, 200, 400]
    targets = linear_map(scores, numels, 0.6, 0.3)
    assert sum(t * n for t, n in zip(targets, numels)) / sum(numels) == pytest.approx(0.6, abs=1e-12)
    assert sorted(range(4), key=targets.__getitem__) == sorted(range(4), key=scores.__getitem__)  # lower score, less pruning
    scale = targets[2] / 1.3
    assert targets[1] == pytest.approx(0.7 * scale) and targets[2] == pytest.approx(1.3 * scale)  # [1 - eps, 1 + eps] x scale
    high = linear_map(scores, numels, 0.9, 0.3)
    assert max(high) == pytest.approx(0.99)
    assert sum(t * n for t, n in zip(high, numels)) / sum(numels) == pytest.approx(0.9, abs=1e-12)
    assert linear_map([2.0] * 4, numels, 0.6, 0.3) == [0.6] * 4
    assert linear_map(scores, numels, 0.6, 0.0) == pytest.approx([0.6] * 4)


@pytest.mark.parametrize("given, where", [({"eps": 1.0}, "eps"), ({"estimator": "lissa"}, "estimator"),
                                          ({"aggregate": "max"}, "aggregate"), ({"scope": "mlp"}, "scope"),
                                          ({"train": 0}, "train"), ({"val": 2.5}, "val"), ({"seqlen": 1}, "seqlen"),
                                          ({"train": "8"}, "train")])
def test_layerif_checks_its_parameters(given, where):
    with pytest.raises(WorkbenchError) as caught:
        ALLOCATORS.get("layerif").params(given)
    assert caught.value.where == f"allocator_params.{where}"


def _plan(sparsity=0.6, **params) -> Plan:
    return Plan(allocator="layerif", allocator_params={**SMALL, **params}, sparsity=sparsity)


def _count_gradient_runs(monkeypatch) -> list[int]:
    import workbench.engine.signals

    runs = []

    def counted(*args, **kwargs):
        runs.append(1)
        return gradient_grams(*args, **kwargs)

    monkeypatch.setattr(workbench.engine.signals, "gradient_grams", counted)
    return runs


def test_prepare_computes_the_scores_once_and_the_allocator_reads_them(monkeypatch):
    engine = make_engine()
    runs = _count_gradient_runs(monkeypatch)
    assert all(b.influence is None for b in engine.state().blocks)
    messages = []
    engine.prepare(_plan(), progress=lambda message, fraction: messages.append(message))
    assert runs == [1] and any("influence" in m for m in messages)
    engine.prune(_plan())
    engine.allocate(_plan(sparsity=0.7))
    engine.prepare(_plan(estimator="identity", aggregate="all"))  # the same gradients
    assert runs == [1]
    state = engine.state()
    scores = [b.influence for b in state.blocks]
    assert scores == engine.signals.influence(InfluenceSpec("identity", "all", "attention", 4, 2, 16))
    engine.prune(_plan())  # the read model shows the scores the plan's allocator read last
    spec = InfluenceSpec("datainf", "positive-totals", "attention", 4, 2, 16)
    assert [b.influence for b in engine.state().blocks] == engine.signals.influence(spec)
    targets = engine.block_targets(_plan())
    assert sorted(range(4), key=targets.__getitem__) == sorted(range(4), key=engine.signals.influence(spec).__getitem__)
    assert sum(t * n for t, n in zip(targets, engine.block_numels())) / sum(engine.block_numels()) == pytest.approx(0.6)
    assert runs == [1]
    engine.prepare(_plan(scope="all"))
    assert runs == [1, 1]


def test_raw_scores_of_a_spec_under_every_aggregate():
    engine = make_engine()
    assert engine.signals.influence_scores() is None
    engine.prepare(_plan())
    spec = InfluenceSpec("datainf", "positive-totals", "attention", 4, 2, 16)
    raw = engine.signals.influence_scores()
    assert raw.spec == spec and raw.blocks == engine.signals.influence(spec)
    assert set(raw.by_aggregate) == set(AGGREGATES) and all(len(v) == 4 for v in raw.by_aggregate.values())
    notebook = engine.signals.influence_scores(InfluenceSpec("datainf", "notebook", "attention", 4, 2, 16))
    assert notebook.blocks == raw.by_aggregate["notebook"] == engine.signals.influence(notebook.spec)
    data = json.loads(json.dumps(raw.to_dict()))
    assert data["aggregate"] == "positive-totals" and data["train"] == 4 and data["scores"] == raw.by_aggregate
    assert engine.signals.influence_scores(InfluenceSpec("datainf", "all", "all", 4, 2, 16)) is None  # not computed


def test_scores_are_of_the_dense_model():
    pruned = make_engine()
    pruned.prune(Plan(sparsity=0.5))
    pruned.prepare(_plan())
    dense = make_engine()
    dense.prepare(_plan())
    assert pruned.signals.influence_if_computed() == pytest.approx(dense.signals.influence_if_computed(), rel=1e-6)


def test_cancelled_prepare_keeps_nothing():
    engine = make_engine()
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        engine.prepare(_plan(), cancel=cancel)
    spec = engine.planner.influence_spec(engine.check_plan(_plan()))
    assert engine.signals.influence_if_computed() is None and engine.signals.influence_scores(spec) is None
    with pytest.raises(Cancelled):
        engine.prune(_plan(), cancel=cancel)
    assert engine.plan is None and not engine.bank.assignments()
    engine.prepare(_plan())
    assert len(engine.signals.influence_if_computed()) == 4


def test_session_round_trips_a_layerif_plan(tmp_path):
    from workbench.cli.main import block_table
    from workbench.domain.session import load_session, save_session, session_from_engine

    engine = make_engine()
    plan = _plan(eps=0.2, estimator="identity")
    engine.prune(plan)
    table = block_table(engine.state()).splitlines()
    assert table[0].split()[-1] == "influence" and all(row.split()[-1] != "-" for row in table[2:])
    save_session(session_from_engine(engine), tmp_path / "s.toml")
    loaded = load_session(tmp_path / "s.toml")
    assert loaded.plan == plan
    raw = engine.signals.influence_scores()
    assert loaded.influence == raw.to_dict() and loaded.influence["aggregate"] == "positive-totals"
    assert loaded.influence["scores"]["positive-totals"] == raw.blocks and len(raw.blocks) == len(engine.linears)
    again = make_engine()
    again.prune(loaded.plan)
    assert again.weights_digest() == engine.weights_digest()

