"""Engine on the tiny random Llama: incremental re-pruning, idempotence, cancel, allocation, statistics."""

import dataclasses
import threading

import pytest
import torch

from tests.conftest import make_engine
from workbench.domain.plan import Plan
from workbench.engine.capture import add_upper_gram, symmetric_from_upper
from workbench.engine.planner import Planner
from workbench.infra.errors import Cancelled, WorkbenchError


def weights(engine):
    return {name: ref.module.weight.detach().clone() for name, ref in engine.refs.items()}


def test_prune_reaches_target_and_keeps_dense(engine):
    dense = weights(engine)
    engine.prune(Plan(method="wanda", sparsity=0.5))
    state = engine.state()
    assert state.achieved == pytest.approx(0.5, abs=1e-3)
    assert all(b.achieved == pytest.approx(0.5, abs=1e-2) for b in state.blocks)
    engine.restore_dense()
    assert all(torch.equal(w, dense[n]) for n, w in weights(engine).items())
    assert engine.state().achieved == pytest.approx(sum((w == 0).sum().item() for w in dense.values()) / engine.state().params_total)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_reprune_from_dense_is_idempotent(engine, method):
    plan = Plan(method=method, sparsity=0.5)
    engine.prune(plan)
    first = weights(engine)
    assert engine.apply(plan).linears_pruned == 0
    engine.apply(Plan(method=method, sparsity=0.8))
    report = engine.apply(plan)
    assert report.linears_pruned == len(engine.refs)
    assert all(torch.equal(w, first[n]) for n, w in weights(engine).items())


def test_apply_touches_only_changed_linears(engine):
    engine.prune(Plan(sparsity=0.5))
    before = weights(engine)
    report = engine.apply(Plan(sparsity=0.5, block_overrides={2: 0.7}))
    assert report.linears_pruned == 7
    after = weights(engine)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {r.name for r in engine.linears[2]}
    assert engine.state().blocks[2].achieved == pytest.approx(0.7, abs=0.01)
    name = engine.linears[1][6].name
    assert engine.apply(Plan(sparsity=0.5, block_overrides={2: 0.7}, linear_overrides={name: 0.9})).linears_pruned == 1
    assert engine.state().blocks[1].linears[6].achieved == pytest.approx(0.9, abs=0.01)


def test_cancelled_apply_leaves_each_linear_old_or_new(engine):
    engine.prune(Plan(sparsity=0.5))
    old = weights(engine)
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        engine.apply(Plan(sparsity=0.8), cancel=lambda: next(calls) >= 10)
    engine_new = make_engine()
    engine_new.prune(Plan(sparsity=0.5))
    engine_new.apply(Plan(sparsity=0.8))
    new = weights(engine_new)
    now = weights(engine)
    kinds = ["old" if torch.equal(now[n], old[n]) else "new" if torch.equal(now[n], new[n]) else "half" for n in now]
    assert kinds.count("half") == 0
    assert kinds.count("new") == 10
    assert engine.plan == Plan(sparsity=0.5)  # the plan only moves on completion


@pytest.mark.parametrize("stop_after", [1, 9, 20])
def test_cancelled_full_prune_restores_previous_state(engine, stop_after):
    engine.prune(Plan(method="wanda", sparsity=0.5))
    old, old_state = weights(engine), engine.state()
    calls = iter(range(1000))
    with pytest.raises(Cancelled):
        engine.prune(Plan(method="magnitude", sparsity=0.7), cancel=lambda: next(calls) >= stop_after)
    assert all(torch.equal(w, old[n]) for n, w in weights(engine).items())
    assert engine.state() == old_state


def test_cancelled_first_prune_leaves_model_dense(engine):
    dense = weights(engine)
    calls = iter(range(1000))
    with pytest.raises(Cancelled):
        engine.prune(Plan(sparsity=0.5), cancel=lambda: next(calls) >= 5)
    assert all(torch.equal(w, dense[n]) for n, w in weights(engine).items())
    assert engine.state().achieved == pytest.approx(0, abs=1e-6)


def test_owl_allocation_mean_and_range(engine):
    plan = Plan(method="wanda", allocator="owl", sparsity=0.7, allocator_params={"lambda": 0.08})
    blocks = engine.block_targets(plan)
    numels = engine.block_numels()
    assert sum(t * n for t, n in zip(blocks, numels)) / sum(numels) == pytest.approx(0.7, abs=1e-9)
    assert max(blocks) - min(blocks) == pytest.approx(0.16)
    ratios, _ = engine.outlier_ratios(5.0, dense=True)
    assert blocks.index(min(blocks)) == ratios.index(max(ratios))
    engine.prune(plan)
    # the tiny model's rows have 128 or 320 inputs: rounding per row bounds the error by 0.5/128
    assert engine.state().achieved == pytest.approx(0.7, abs=0.5 / 128)


def test_sequential_and_one_pass_statistics_differ_after_block_0():
    seq, one = make_engine(mode="sequential"), make_engine(mode="one-pass")
    for e in (seq, one):
        e.prune(Plan(sparsity=0.6))
    s0, o0 = seq.statistics.committed[0]["q"].sq_norm, one.statistics.committed[0]["q"].sq_norm
    assert torch.allclose(s0, o0)
    assert not torch.allclose(seq.statistics.committed[2]["q"].sq_norm, one.statistics.committed[2]["q"].sq_norm)
    # one-pass statistics are those of the dense model, whatever was pruned before
    again = make_engine(mode="one-pass")
    again.prune(Plan(sparsity=0.9))
    again.prune(Plan(sparsity=0.6))
    assert torch.allclose(again.statistics.committed[3]["down"].sq_norm, one.statistics.committed[3]["down"].sq_norm)


def test_statistics(engine, hessian_engine):
    engine.prune(Plan(sparsity=0.5))
    state = engine.state()
    block = state.blocks[1]
    assert block.recon_error is None and block.outlier_ratio is not None and block.act_norm > 0
    lin = block.linears[0]
    assert lin.kind == "q" and lin.shape == (128, 128) and lin.w_max_abs >= lin.w_mean_abs > 0
    assert 0 <= lin.outlier_ratio < 0.5 and lin.kurtosis > 1
    hessian_engine.prune(Plan(sparsity=0.5))
    recon = hessian_engine.state().blocks[1]
    assert 0 < recon.recon_error < 1
    assert all(0 < x.recon_error < 1 for x in recon.linears)
    edges, dense_counts, pruned_counts = hessian_engine.histogram(lin.name, bins=10)
    assert len(edges) == 11 and sum(dense_counts) == lin.numel
    assert sum(pruned_counts) == pytest.approx(lin.numel * 0.5, abs=lin.numel * 0.01)


def test_sparsegpt_switch_recaptures_hessian(engine):
    assert engine.needs_full_prune(Plan(method="wanda", sparsity=0.5))
    engine.prune(Plan(method="wanda", sparsity=0.5))
    assert not engine.statistics.has_hessian()
    assert not engine.needs_full_prune(Plan(method="magnitude", sparsity=0.7))
    assert engine.needs_full_prune(Plan(method="sparsegpt", sparsity=0.5))
    engine.apply(Plan(method="sparsegpt", sparsity=0.5))
    assert engine.statistics.has_hessian()
    assert engine.state().blocks[0].recon_error is not None


def test_hessians_are_spilled_to_disk_and_cleaned_up(engine):
    engine.prune(Plan(method="sparsegpt", sparsity=0.5))
    files = engine.statistics.hessians.files()
    assert len(files) == 4 and all(p.is_file() for p in files)
    assert all(s.hessian is None for block in engine.statistics.committed for s in block.values())
    first = weights(engine)
    engine.apply(Plan(method="sparsegpt", sparsity=0.6))
    engine.apply(Plan(method="sparsegpt", sparsity=0.5))  # re-pruned from the spilled Hessians
    assert all(torch.equal(w, first[n]) for n, w in weights(engine).items())
    engine.prune(Plan(method="sparsegpt", sparsity=0.5))
    assert not any(p.exists() for p in files) and len(engine.statistics.hessians.files()) == 4


@pytest.mark.parametrize("plan, where", [
    (Plan(sparsity=1.0), "sparsity"),
    (Plan(sparsity=-0.1), "sparsity"),
    (Plan(method="obc"), "method"),
    (Plan(allocator="layerwise"), "allocator"),
    (Plan(block_overrides={4: 0.5}), "overrides.blocks.4"),
    (Plan(linear_overrides={"layers.0.mlp.fc1": 0.5}), "overrides.linears.layers.0.mlp.fc1"),
    (Plan(pattern="2:4", block_overrides={0: 0.5}), "overrides"),
    (Plan(pattern="3:2"), "pattern"),
    (Plan(method_params={"blocksize": 64}), "method_params"),
])
def test_invalid_plans_are_refused_before_any_change(engine, plan, where):
    before = weights(engine)
    with pytest.raises(WorkbenchError) as err:
        engine.apply(plan)
    assert err.value.where == where
    assert all(torch.equal(w, before[n]) for n, w in weights(engine).items())


@pytest.mark.parametrize("plan", [Plan(sparsity=0.5), Plan(allocator="owl", sparsity=0.5), Plan(pattern="2:4")])
def test_each_prune_and_apply_checks_the_plan_once(engine, monkeypatch, plan):
    checked = []
    check = Planner.check
    monkeypatch.setattr(Planner, "check", lambda self, p: checked.append(p) or check(self, p))
    engine.apply(plan)  # no statistics yet: a full prune
    assert checked == [plan]
    edited = dataclasses.replace(plan, sparsity=0.6) if plan.pattern is None else Plan(pattern="1:4")
    engine.apply(edited)  # incremental
    engine.prune(plan)
    assert checked == [plan, edited, plan]
    once = engine.check_plan(plan)  # a checked plan is not checked again
    engine.prepare(once)
    engine.allocate(once)
    engine.apply(once)
    assert checked == [plan, edited, plan, plan] and engine.plan is plan


def test_nm_pattern_on_whole_model(engine):
    engine.prune(Plan(method="sparsegpt", pattern="2:4"))
    for ref in engine.refs.values():
        w = ref.module.weight
        assert torch.all((w != 0).reshape(w.shape[0], -1, 4).sum(2) == 2)


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.model.layout import find_linears

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(WorkbenchError, match="GPT2LMHeadModel.*expected model.model.layers"):
        find_linears(model)


def test_offloaded_blocks_run_one_at_a_time():
    from workbench.model.loader import attach_offload

    engine = make_engine()
    ids = torch.randint(0, 500, (2, 16))
    dense_logits = engine.loaded.model(ids).logits
    attach_offload(engine.loaded.model, torch.device("cpu"))
    torch.testing.assert_close(engine.loaded.model(ids).logits, dense_logits)
    moves = {i: [] for i in range(len(engine.linears))}
    for i, block in enumerate(engine.loaded.model.model.layers):
        # the offload hooks move a block with the device object and back with the string "cpu"
        block.to = lambda device, i=i, block=block: moves[i].append("cpu" if device == "cpu" else "device") or block
    engine.prune(Plan(sparsity=0.5))
    assert engine.state().achieved == pytest.approx(0.5, abs=1e-3)
    # every visit to the device ends back on the CPU, also the statistics passes that stop early
    for block, m in moves.items():
        visits = [n for n, where in enumerate(m) if where == "device"]
        assert visits and all(n + 1 < len(m) and m[n + 1] == "cpu" for n in visits), (block, m)


def test_probe_keeps_dense_reference(engine):
    engine.prune(Plan(sparsity=0.7))
    before = weights(engine)
    [pruned] = engine.probe(["perplexity"])
    dense = engine.dense_probes["perplexity"]
    assert pruned.score != dense.score and dense.score > 1
    assert all(torch.equal(w, before[n]) for n, w in weights(engine).items())


def test_dense_copies_are_never_written(engine):
    """Pruning writes the module's own copy of each weight, never the dense weight kept aside."""
    snapshot = {n: (w.clone(), w._version) for n, w in ((n, engine.bank.dense(n)) for n in engine.refs)}
    engine.prune(Plan(method="sparsegpt", sparsity=0.5))
    engine.apply(Plan(method="wanda", allocator="owl", sparsity=0.6))
    engine.probe(["perplexity"])
    engine.restore_dense()
    assert all(torch.equal(w, snapshot[n][0]) and w._version == snapshot[n][1] for n, w in ((n, engine.bank.dense(n)) for n in engine.refs))
    assert all(torch.equal(ref.module.weight, engine.bank.dense(n)) for n, ref in engine.refs.items())


@pytest.mark.parametrize("d", [5, 300, 700])
def test_upper_gram_completes_to_x_transpose_x(d):
    torch.manual_seed(d)
    xs = [torch.randn(64, d) for _ in range(2)]
    hessian = torch.zeros(d, d)
    for x in xs:
        add_upper_gram(hessian, x)
    expected = sum(x.T @ x for x in xs)
    assert torch.allclose(symmetric_from_upper(hessian), expected, rtol=1e-4, atol=1e-3)


def test_sparsegpt_prunes_linears_of_one_input_together_with_their_own_targets(engine):
    k = "layers.0.self_attn.k_proj"
    engine.prune(Plan(method="sparsegpt", sparsity=0.5, linear_overrides={k: 0.8}))
    achieved = {x.name: x.achieved for b in engine.state().blocks for x in b.linears}
    assert achieved[k] == pytest.approx(0.8, abs=1e-3)
    assert achieved["layers.0.self_attn.q_proj"] == pytest.approx(0.5, abs=1e-3)
    old = weights(engine)
    calls = iter(range(100))
    with pytest.raises(Cancelled):  # cancel between groups: every linear old or new, none half
        engine.apply(Plan(method="sparsegpt", sparsity=0.7), cancel=lambda: next(calls) >= 2)
    fresh = make_engine()
    fresh.prune(Plan(method="sparsegpt", sparsity=0.5, linear_overrides={k: 0.8}))
    fresh.apply(Plan(method="sparsegpt", sparsity=0.7))
    new, now = weights(fresh), weights(engine)
    kinds = ["old" if torch.equal(now[n], old[n]) else "new" if torch.equal(now[n], new[n]) else "half" for n in now]
    assert kinds.count("half") == 0 and kinds[:4] == ["new", "new", "new", "new"] and kinds.count("new") == 4


def test_every_public_call_is_safe_from_two_threads(engine):
    """One thread edits while another reads, allocates and computes dense statistics (which swap weights
    to dense and back): nothing fails and the end state is exactly that of the last edit."""
    engine.prune(Plan(sparsity=0.5))
    plans = [Plan(sparsity=0.3 + 0.05 * i, allocator="owl" if i % 2 else "uniform") for i in range(8)]
    name = engine.linears[1][0].name
    errors: list[BaseException] = []

    def guarded(work):
        def run():
            try:
                work()
            except BaseException as exc:  # reported below
                errors.append(exc)
        return threading.Thread(target=run)

    def edit():
        for plan in plans:
            engine.apply(plan)

    def read():
        for i in range(40):
            engine.state()
            engine.histogram(name)
            engine.allocate(plans[i % len(plans)])
            engine.needs_full_prune(plans[0])
            engine.outlier_ratios(5.0, dense=True)
            engine.mask_fingerprints()

    threads = [guarded(edit), guarded(read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    reference = make_engine()
    reference.prune(Plan(sparsity=0.5))
    reference.apply(plans[-1])
    assert engine.weights_digest() == reference.weights_digest()
    assert engine.state().achieved == reference.state().achieved


def test_prepare_computes_what_the_allocator_needs_once(engine):
    messages = []
    engine.prepare(Plan(allocator="uniform"), progress=lambda m, f: messages.append(m))
    assert engine.statistics.dense is None and messages == []
    engine.prepare(Plan(allocator="owl", pattern="2:4"), progress=lambda m, f: messages.append(m))
    assert engine.statistics.dense is None  # a pattern fixes every target: no allocator runs
    engine.prepare(Plan(allocator="owl"), progress=lambda m, f: messages.append(m))
    assert engine.statistics.dense is not None and messages[0] == "owl: statistics of the dense model"
    count = len(messages)
    engine.prepare(Plan(allocator="owl", sparsity=0.7), progress=lambda m, f: messages.append(m))
    assert len(messages) == count
