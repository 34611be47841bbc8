"""The sensitivity scan's perplexity from kept block inputs: the same numbers as the whole model, with
only the blocks from the raised one on running."""

import dataclasses

import pytest

from tests.conftest import make_engine
from workbench.domain.plan import Plan, Structure
from workbench.model.layout import blocks_of
from workbench.studies.sensitivity import raised, scan, suffix_measure


@pytest.mark.parametrize("probe", ["perplexity", "kl"])
def test_suffix_measure_equals_the_probe_from_every_block(probe):
    engine = make_engine()
    plan = Plan(sparsity=0.5)
    engine.prune(plan)
    measure = suffix_measure(engine, probe)
    whole = engine.probe([probe])[0].score
    assert whole > (1.0 if probe == "perplexity" else 0.0)
    # Same kernels on the same batches as the model's own forward: float32 summation order is the only
    # difference (summed per batch in both, kl's tokens in another order), so 1e-5 relative is ample.
    for position in range(len(blocks_of(engine.loaded.model)) + 1):  # the last: the head only
        assert measure(position) == pytest.approx(whole, rel=1e-5)


def test_a_kl_scan_matches_the_probe_after_the_raise():
    engine = make_engine()
    plan = Plan(sparsity=0.5)
    engine.prune(plan)
    result = scan(engine, plan, step=0.2, probe="kl", blocks=[2])
    engine.apply(raised(plan, 2, 0.2, engine.block_targets(plan)[2]))
    assert result.deltas[2] == pytest.approx(engine.probe(["kl"])[0].score - result.base, rel=1e-4, abs=1e-6)


def test_a_raised_block_is_measured_without_running_the_blocks_before_it():
    engine = make_engine()
    plan = Plan(sparsity=0.5)
    engine.prune(plan)
    calls = []
    handle = blocks_of(engine.loaded.model)[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        result = scan(engine, plan, step=0.2, probe="perplexity", blocks=[3])
    finally:
        handle.remove()
    batches = len(calls)  # block 0 ran only while the inputs were kept, once per batch
    assert batches == 1
    engine.apply(raised(plan, 3, 0.2, engine.block_targets(plan)[3]))
    assert result.deltas[3] == pytest.approx(engine.probe(["perplexity"])[0].score - result.base, rel=1e-6)


def test_dropped_blocks_are_skipped_and_the_rest_map_to_running_positions():
    engine = make_engine()
    plan = dataclasses.replace(Plan(sparsity=0.3), structure=Structure(drop_blocks=[1]))
    engine.prune(plan)
    result = scan(engine, plan, step=0.2, probe="perplexity")
    assert result.deltas[1] is None and all(d is not None for i, d in enumerate(result.deltas) if i != 1)
    engine.apply(raised(plan, 2, 0.2, engine.block_targets(plan)[2]))
    assert result.deltas[2] == pytest.approx(engine.probe(["perplexity"])[0].score - result.base, rel=1e-6)
    with pytest.raises(Exception, match="dropped by the plan"):
        scan(engine, plan, blocks=[1])
