"""Snapshot tests of the main screens at 80x24 and 120x40 (tiny seeded model, so the numbers are fixed; the
Compare screen and the sensitivity column show hand-built results).
Regenerate with `pytest tests/tui/test_snapshots.py --snapshot-update` after a deliberate change."""

from __future__ import annotations

from tests.tui.conftest import settle
from workbench.compare import Comparison, VariantResult
from workbench.plan import Plan
from workbench.probes import ProbeResult
from workbench.sensitivity import Sensitivity


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
    pilot.app.controller.comparison = hand_built_comparison()
    pilot.app.controller.add_variant("current", pilot.app.controller.plan)
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
    pilot.app._show_heat()
    await pilot.pause()


def test_sensitivity_column_80x24(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=_sensitivity_column)


def test_sensitivity_column_120x40(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(120, 40), run_before=_sensitivity_column)
