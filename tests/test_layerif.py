"""LayerIF: block-at-a-time per-example gradients, DataInf, the allocator's map, and its wiring."""

import pytest
import torch

from tests.conftest import make_engine
from tests.tiny import tiny_llama
from workbench.allocators import ALLOCATORS, InfluenceSpec
from workbench.allocators.layerif import AGGREGATES, ESTIMATORS, SCOPES, linear_map
from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.engine.gradients import (LinearGrams, block_gradients, block_influence, datainf, dot_product,
                                 gradient_grams, mean_abs_gradients)
from workbench.domain.plan import Plan
from workbench.engine.gradients import AGGREGATES as AGGREGATE_FNS
from workbench.engine.gradients import ESTIMATORS as ESTIMATOR_FNS
from workbench.engine.gradients import SCOPES as SCOPE_KINDS
from workbench.model.loader import find_linears

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
    assert block_influence([block], "datainf", "positive") == [pytest.approx(pairs.clamp(min=0).sum().item())]
    assert block_influence([block], "identity", "all") == [pytest.approx((-block[0].cross - block[1].cross).sum().item())]


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
    spec = InfluenceSpec("datainf", "positive", "attention", 4, 2, 16)
    assert [b.influence for b in engine.state().blocks] == engine.signals.influence(spec)
    targets = engine.block_targets(_plan())
    assert sorted(range(4), key=targets.__getitem__) == sorted(range(4), key=engine.signals.influence(spec).__getitem__)
    assert sum(t * n for t, n in zip(targets, engine.block_numels())) / sum(engine.block_numels()) == pytest.approx(0.6)
    assert runs == [1]
    engine.prepare(_plan(scope="all"))
    assert runs == [1, 1]


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
    assert engine.signals.influence_if_computed() is None and not engine.signals._grams
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
    again = make_engine()
    again.prune(loaded.plan)
    assert again.weights_digest() == engine.weights_digest()

