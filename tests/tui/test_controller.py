"""The app's controller without Textual or a model: loading, edits and their history, the pause before a
re-prune, full against incremental prunes, work queued until a prune lands, probes and sessions, the
Compare screen's variants and the engine lent to a comparison or a sensitivity scan."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from workbench.app import edits
from workbench.app.controller import Controller, PruneJob
from workbench.app.edits import BlockKey
from workbench.domain.plan import Plan
from workbench.probes import ProbeResult
from workbench.studies.compare import Comparison, VariantResult


def linear(name: str, numel: int, target: float = 0.5):
    return SimpleNamespace(name=name, numel=numel, target=target)


STATE = SimpleNamespace(blocks=[
    SimpleNamespace(linears=[linear("layers.0.q", 100), linear("layers.0.down", 300)]),
    SimpleNamespace(linears=[linear("layers.1.q", 100), linear("layers.1.down", 300)]),
])


def result(score: float) -> ProbeResult:
    return ProbeResult("perplexity", score, "ppl", False, 2, 0.0, "quick", 0.05, 0.0)


def busy(controller: Controller, *groups: str) -> Controller:
    """`controller`, told from now on that jobs of `groups` run (none: nothing runs)."""
    controller.running = lambda *asked: not set(asked).isdisjoint(groups)
    return controller


def applied_controller() -> Controller:
    """A controller whose first full prune has landed."""
    controller = Controller()
    calibrate = controller.start(None)
    busy(controller).prune_job(calibrate=calibrate)
    controller.landed(STATE, controller.plan, {}, final=True, full=True)
    return controller


def test_a_fresh_model_starts_with_a_full_prune_of_the_default_plan():
    controller = Controller()
    assert not controller.loaded
    calibrate = controller.start(None)
    assert calibrate == Plan() == controller.plan and not controller.applied
    assert busy(controller, "prune").note() == "re-pruning"
    assert busy(controller).prune_job(calibrate=calibrate) == PruneJob(Plan(), Plan())
    landing = controller.landed(STATE, Plan(), {"layers.0.q": 0.5}, final=True, full=True)
    assert landing.current and landing.follow_ups == [] and landing.prune is None
    assert controller.applied and busy(controller).note() is None and not controller.dirty
    engine_plan = Plan(sparsity=0.6)
    assert controller.start(engine_plan) is None and controller.applied  # a reused engine keeps its statistics


def test_an_edit_waits_for_its_prune_and_a_running_full_prune_picks_it_up():
    controller = applied_controller()
    plan, label = edits.move_slider(controller.plan, BlockKey(1), 0.6)
    assert controller.edit(plan, label, source=BlockKey(1), now=1.0)
    assert not controller.edit(plan, label, source=BlockKey(1), now=1.1)  # nothing changed
    assert controller.edit_pending and controller.dirty and not controller.applied
    assert busy(controller).note() == "re-pruning"
    assert busy(controller, "calibrate").prune_job() is None  # the full prune re-prunes it when it lands
    assert not controller.edit_pending
    landing = controller.landed(STATE, Plan(), {}, final=True, full=True)  # an older plan's full prune
    assert not landing.current and landing.prune == PruneJob(plan)
    assert busy(controller).prune_job() == PruneJob(plan)
    assert controller.landed(STATE, plan, {"layers.1.q": 0.6}, final=False, full=False).current
    assert not controller.applied
    controller.landed(STATE, plan, {"layers.1.q": 0.6}, final=True, full=False)
    assert controller.applied and controller.targets == {"layers.1.q": 0.6}


def test_work_waits_until_the_current_plan_is_applied():
    controller = applied_controller()
    ran = []
    assert not busy(controller).when_applied(lambda: ran.append("now")) and ran == ["now"]
    plan, label = edits.set_global(controller.plan, 0.7)
    controller.edit(plan, label)
    assert busy(controller).when_applied(lambda: ran.append("probe"))  # the caller starts the prune
    assert not busy(controller, "prune").when_applied(lambda: ran.append("save"))
    assert ran == ["now"]
    assert controller.landed(STATE, Plan(), {}, final=True, full=False).follow_ups == []  # not the current plan
    landing = controller.landed(STATE, plan, {}, final=True, full=False)
    for action in landing.follow_ups:
        action()
    assert ran == ["now", "probe", "save"]
    assert controller.landed(STATE, plan, {}, final=True, full=False).follow_ups == []


def test_cancel_and_failure_drop_the_queued_work():
    controller = applied_controller()
    controller.edit(*edits.set_global(controller.plan, 0.7))
    busy(controller, "prune").when_applied(lambda: None)
    controller.cancel()
    assert not controller.edit_pending and busy(controller).note() == "not applied (p prunes)"
    busy(controller, "prune").when_applied(lambda: None)
    controller.prune_failed()
    assert controller.landed(STATE, controller.plan, {}, final=True, full=False).follow_ups == []


def test_undo_and_redo_return_the_labels_and_mark_the_plan_pending():
    controller = applied_controller()
    assert controller.undo() is None
    controller.edit(*edits.set_block(controller.plan, 0, 0.6), now=1.0)
    busy(controller).prune_job()
    assert controller.undo() == "block 0 60.0%" and controller.plan == Plan() and controller.edit_pending
    assert controller.redo() == "block 0 60.0%" and controller.plan.block_overrides == {0: 0.6}
    assert controller.redo() is None


def test_probes_belong_to_the_plan_they_were_measured_on():
    controller = applied_controller()
    dense = {"perplexity": result(18.0)}
    controller.probes_done([result(20.0)], dense, controller.plan)
    assert controller.history.current.probes == {"perplexity": 20.0} and controller.dirty
    assert not controller.probes_stale and [p.score for p in controller.current_probes] == [20.0]
    controller.edit(*edits.set_global(controller.plan, 0.6))
    assert controller.probes_stale and controller.current_probes == []
    controller.probes_done([result(25.0)], dense, Plan())  # measured before the edit
    assert controller.history.current.probes == {}


def test_sessions_open_restore_and_save(tmp_path):
    plan, calibrated = Plan(sparsity=0.6, block_overrides={1: 0.7}), Plan(sparsity=0.6)
    session = SimpleNamespace(plan=plan, calibrated_with=calibrated, history=[], probes=[result(20.0)],
                              dense_probes=[result(18.0)], sections={})
    controller = Controller()
    assert controller.open(session, tmp_path / "run.toml", restored=False, applied=None) == calibrated
    assert controller.session_path == tmp_path / "run.toml" and not controller.dirty
    assert controller.plan == plan and not controller.probes_stale and set(controller.dense_probes) == {"perplexity"}
    controller.open(session, tmp_path / "recovery.toml", restored=True, applied=plan)
    assert controller.session_path is None and controller.dirty and controller.applied
    controller.saved(tmp_path / "again.toml")
    assert controller.session_path == Path(tmp_path / "again.toml") and not controller.dirty


def test_what_the_plots_show():
    controller = applied_controller()
    controller.landed(STATE, controller.plan, {"layers.0.q": 0.9, "layers.0.down": 0.5}, final=True, full=False)
    assert controller.block_targets() == pytest.approx([0.6, 0.5])
    assert controller.default_linear(1) == "layers.1.down"


def measured(name: str, plan: Plan, score: float) -> VariantResult:
    return VariantResult(name, plan, [result(score)], [0.5, 0.5], 0.5, 1000, 1.0)


def test_a_comparison_borrows_the_engine_and_the_current_plan_is_restored_by_a_full_prune():
    controller = applied_controller()
    controller.lend("comparing variants", Plan(sparsity=0.4))
    assert controller.lent and not controller.applied and busy(controller).note() == "comparing variants"
    ran = []
    assert not busy(controller).when_applied(lambda: ran.append("save"))  # waits, starts nothing
    edited, label = edits.set_global(controller.plan, 0.7)
    controller.edit(edited, label)
    assert busy(controller).prune_job() is None and not controller.edit_pending
    landing = controller.returned(Plan(allocator="owl"))  # the engine holds the last variant
    assert not controller.lent and landing.prune == PruneJob(edited, Plan(sparsity=0.4)) and ran == []
    assert controller.landed(STATE, edited, {}, final=True, full=True).follow_ups and controller.restoring is None


def test_p_while_lent_is_the_full_prune_after_it_and_a_scan_comes_back_in_its_plan():
    controller = applied_controller()
    controller.lend("comparing variants", Plan(sparsity=0.4))
    busy(controller).prune_job(calibrate=controller.plan)
    assert controller.returned(None).prune == PruneJob(Plan(), Plan())
    controller.landed(STATE, Plan(), {}, final=True, full=True)
    ran = []
    controller.lend("sensitivity scan", None)
    busy(controller).when_applied(lambda: ran.append("probe"))
    landing = controller.returned(controller.plan)
    assert landing.current and landing.prune is None and ran == []
    for action in landing.follow_ups:
        action()
    assert ran == ["probe"] and controller.applied


def test_variants_are_queued_measured_merged_and_used():
    controller = applied_controller()
    variants, owl = controller.variants, Plan(allocator="owl")
    assert variants.add("current", controller.plan) == "current"
    assert variants.add("owl", owl) == "owl"
    assert variants.add("owl", owl) == "owl 2"
    controller.dirty = False
    controller.remove_variant("owl 2")  # a queued one: the saved comparison is unchanged
    assert [name for name, _, _ in variants.columns] == ["current", "owl"] and not controller.dirty
    assert variants.variant("owl") is None  # not measured yet
    controller.compared(Comparison(["perplexity"], dense=[result(18.0)], results=[measured("owl", owl, 21.0)]))
    assert [(n, r is not None) for n, _, r in variants.columns] == [("owl", True), ("current", False)]
    assert controller.dirty and variants.variant("owl") == (owl, "variant owl")
    controller.compared(Comparison(["perplexity"], dense=[result(18.0)], results=[measured("current", Plan(), 20.0)],
                                   outlier_ratios=[0.1, 0.2]))
    assert [r.name for r in variants.comparison.results] == ["owl", "current"] and variants.queued == []
    assert variants.comparison.outlier_ratios == [0.1, 0.2] and variants.comparison.best("perplexity") == "current"
    controller.dirty = False
    controller.remove_variant("owl")
    assert [r.name for r in variants.comparison.results] == ["current"] and controller.dirty


def fake_run(done: bool, final: Plan) -> SimpleNamespace:
    """What the controller reads of an agent run."""
    return SimpleNamespace(done=done, final_plan=lambda: final, log=lambda: "the log")


def test_an_agent_run_keeps_the_engine_while_paused_and_its_allocation_is_one_edit():
    controller = applied_controller()
    final = Plan(allocator="agent", allocator_params={"start": 0.4, "steps": []})
    controller.agent_run, controller.agent_stepping = fake_run(False, final), True
    controller.lend("agent run", Plan())
    assert not controller.agent_paused and busy(controller).note() == "agent run"
    controller.agent_stepping = False
    assert controller.agent_paused and busy(controller).note() == "agent run paused (A)"
    controller.agent_run.done = True  # stopped: the engine holds the final plan, measured with the run's statistics
    assert controller.use_agent(calibrate=None) and controller.agent == "the log"
    assert controller.history.current.label == "agent allocation" and controller.plan == final
    landing = controller.returned(final)
    assert landing.current and landing.prune is None and controller.applied  # nothing to re-establish
    assert not controller.use_agent(calibrate=Plan(sparsity=0.4))  # already the plan
    controller.undo()
    assert controller.plan == Plan() and controller.agent == "the log"
    controller.start(controller.plan)
    assert controller.agent is None and controller.agent_run is None  # a done run belongs to the old session
