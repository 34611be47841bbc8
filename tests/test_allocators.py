"""Allocators: uniform, OWL mean and range, rebalance with clipping."""

import pytest

from workbench.allocators import ALLOCATORS, AllocationContext, rebalance


def _ctx(ratios, numels=None):
    numels = numels or [100] * len(ratios)
    return AllocationContext(block_numels=numels, outlier_ratios=lambda M: ratios)


def _mean(targets, numels):
    return sum(t * n for t, n in zip(targets, numels)) / sum(numels)


def _owl(ctx, sparsity, **given):
    owl = ALLOCATORS.get("owl")
    return owl.allocate(ctx, sparsity, **owl.params(given))


def test_uniform():
    assert ALLOCATORS.get("uniform").allocate(_ctx([0.1, 0.2, 0.3]), 0.5) == [0.5] * 3


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("lam", [0.04, 0.08, 0.2])
def test_owl_mean_and_range(sparsity, lam):
    ratios = [0.010, 0.030, 0.020, 0.050, 0.012, 0.041]
    targets = _owl(_ctx(ratios), sparsity, **{"lambda": lam})
    assert _mean(targets, [100] * 6) == pytest.approx(sparsity, abs=1e-9)
    assert max(targets) - min(targets) == pytest.approx(2 * lam)
    assert min(targets) >= sparsity - 2 * lam - 1e-9 and max(targets) <= sparsity + 2 * lam + 1e-9
    # more outliers, less pruning
    order = sorted(range(6), key=lambda i: ratios[i])
    assert [targets[i] for i in order] == sorted(targets, reverse=True)


def test_owl_symmetric_ratios_span_the_whole_interval():
    targets = _owl(_ctx([0.0, 0.5, 1.0]), 0.5)
    assert targets == pytest.approx([0.58, 0.5, 0.42])


def test_owl_weighted_mean_with_unequal_blocks():
    numels = [100, 300, 50, 250]
    targets = _owl(_ctx([0.1, 0.3, 0.2, 0.05], numels), 0.6)
    assert _mean(targets, numels) == pytest.approx(0.6, abs=1e-9)


def test_owl_flat_ratios_give_uniform():
    assert _owl(_ctx([0.02] * 4), 0.5) == [0.5] * 4


def test_rebalance_clips_and_keeps_mean():
    numels = [1, 1, 1, 1]
    targets = rebalance([0.99, 0.99, 0.2, 0.1], numels, 0.8)
    assert all(0 <= t <= 0.99 for t in targets)
    assert _mean(targets, numels) == pytest.approx(0.8, abs=1e-9)


def test_unknown_allocator_and_params():
    from workbench.infra.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="unknown allocator 'layerwise'"):
        ALLOCATORS.get("layerwise")
    with pytest.raises(WorkbenchError, match="unknown parameter"):
        ALLOCATORS.get("owl").params({"lambada": 1})


@pytest.mark.parametrize("given, where", [({"M": 0.0}, "allocator_params.M"), ({"lambda": 1.0}, "allocator_params.lambda"),
                                          ({"M": "5"}, "allocator_params.M"), ({"lambda": True}, "allocator_params.lambda")])
def test_allocators_check_their_own_parameters(given, where):
    from workbench.infra.errors import WorkbenchError

    with pytest.raises(WorkbenchError) as caught:
        ALLOCATORS.get("owl").params(given)
    assert caught.value.where == where


def test_allocators_declare_what_they_need_and_every_parameter_once():
    from workbench.allocators import NEEDS

    for name in ALLOCATORS.names():
        allocator = ALLOCATORS.get(name)
        assert allocator.needs <= set(NEEDS)
        names = [p.name for p in allocator.declared]
        assert len(set(names)) == len(names) and list(allocator.defaults) == names
        assert all(p.help for p in allocator.declared)
        assert allocator.params({}) == allocator.defaults  # every default passes its own check
