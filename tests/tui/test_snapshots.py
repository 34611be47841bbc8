"""Snapshot tests of the main screens at 80x24 and 120x40 (tiny seeded model, so the numbers are fixed; the
Compare screen, the sensitivity column and the Agent screen show hand-built results).
Regenerate with `pytest tests/tui/test_snapshots.py --snapshot-update` after a deliberate change."""

from __future__ import annotations

from tests.tui.conftest import settle
from workbench.agent.loop import AgentRun, AgentSettings
from workbench.agent.policies import make_policy
from workbench.agent.record import ACCEPTED, NO_ACTION, ROLLED_BACK, StepRecord
from workbench.app.edits import AgentForm
from workbench.domain.plan import Plan
from workbench.probes import ProbeResult
from workbench.studies.compare import Comparison, VariantResult
from workbench.studies.sensitivity import Sensitivity


async def _ready(pilot) -> None:
    await settle(pilot)


def test_main_screen_80x24(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=_ready)


def test_main_screen_120x40(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(120, 40), run_before=_ready)


def test_expanded_block_with_edits_80x24(snap_compare, make_app):
    async def edit(pilot) -> None:
        await settle(pilot)
        await pilot.press("down", "right", "right", "right", "right", "right", "enter", "down", "down", "end")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=edit)


def test_help_screen_80x24(snap_compare, make_app):
    async def help_(pilot) -> None:
        await settle(pilot)
        await pilot.press("question_mark")

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=help_)


def test_plots_allocation_80x24(snap_compare, make_app):
    async def plots(pilot) -> None:
        await settle(pilot)
        await pilot.press("v")
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=plots)


def test_light_theme_owl_120x40(snap_compare, make_app):
    async def owl(pilot) -> None:
        await settle(pilot)
        await pilot.press("a", "up", "enter")
        await settle(pilot)

    assert snap_compare(make_app(theme="light"), terminal_size=(120, 40), run_before=owl)


def hand_built_comparison() -> Comparison:
    """A comparison with fixed numbers (no probes run, so the snapshot is the same on every machine)."""

    def probes(ppl: float, arith: float) -> list[ProbeResult]:
        return [ProbeResult("perplexity", ppl, "ppl", False, 8, 0.0, "quick", 0.05, 0.0, relative=True),
                ProbeResult("arithmetic", arith, "accuracy", True, 20, 0.0, "quick", 0.1, 0.1)]

    def variant(name: str, plan: Plan, ppl: float, arith: float, targets: list[float]) -> VariantResult:
        return VariantResult(name, plan, probes(ppl, arith), targets, 0.7, 31_734_000, 12.5)

    owl = [0.72, 0.66, 0.68, 0.74]
    return Comparison(["perplexity", "arithmetic"], dense=probes(18.25, 0.85), outlier_ratios=[0.02, 0.05, 0.04, 0.01],
                      results=[variant("uniform", Plan(sparsity=0.7), 41.5, 0.55, [0.7] * 4),
                               variant("owl", Plan(allocator="owl", sparsity=0.7), 35.75, 0.6, owl),
                               variant("sparsegpt/owl", Plan(method="sparsegpt", allocator="owl", sparsity=0.7),
                                       30.5, 0.65, owl)])


async def _compare_screen(pilot) -> None:
    """Three measured variants and the current plan queued."""
    await settle(pilot)
    pilot.app.controller.variants.comparison = hand_built_comparison()
    pilot.app.controller.variants.add("current", pilot.app.controller.plan)
    await pilot.press("c")
    await pilot.pause(0.3)


def test_compare_screen_80x24(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=_compare_screen)


def test_compare_screen_120x40(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(120, 40), run_before=_compare_screen)


async def _sensitivity_column(pilot) -> None:
    """A scan with fixed deltas (block 2 not scanned)."""
    await settle(pilot)
    pilot.app.controller.sensitivity = Sensitivity("perplexity", 0.1, 18.25, [0.25, 3.5, None, 12.0])
    pilot.app.features["sensitivity"].show_heat()
    await pilot.pause()


def test_sensitivity_column_80x24(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=_sensitivity_column)


def test_sensitivity_column_120x40(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(120, 40), run_before=_sensitivity_column)


def hand_built_steps() -> list[StepRecord]:
    """Agent steps with fixed numbers and timings (no run, so the snapshot is the same on every machine)."""
    return [StepRecord(1, ACCEPTED, [3], [0.025], 0.40625, score=31.25, change=0.012, seconds=0.5),
            StepRecord(2, ACCEPTED, [1], [0.025], 0.4125, score=32.5, change=0.04, seconds=0.5),
            StepRecord(3, ROLLED_BACK, [0, 2], [0.025, 0.0125], 0.4125, score=40.0, change=0.231, seconds=0.7),
            StepRecord(4, ACCEPTED, [2], [0.025], 0.41875, score=33.0, change=0.015, seconds=0.5),
            StepRecord(5, NO_ACTION, [], [], 0.41875, reason="no valid reply", seconds=1.1)]


async def _agent_screen(pilot) -> None:
    """A paused run with hand-built steps, the built-in policy's default settings."""
    await settle(pilot)
    app = pilot.app
    settings = AgentSettings(measure="perplexity")  # the hand-built steps' values are perplexities
    run = AgentRun(app.engine, app.controller.plan, make_policy("builtin", settings), settings)
    run.records = hand_built_steps()
    app.controller.agent_run = run
    app.controller.agent_form = AgentForm("builtin", None, settings.step, settings.max_steps, settings.rollback, "", "")
    await pilot.press("A")
    await pilot.pause(0.3)


def test_agent_screen_80x24(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=_agent_screen)


async def _structured(pilot) -> None:
    """Block 1 narrowed to 2.3x (295 of 320 neurons), block 2 dropped."""
    await settle(pilot)
    await pilot.press("down", "left_square_bracket", "left_square_bracket", "down", "x")
    await settle(pilot)


def test_structured_blocks_80x24(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=_structured)
