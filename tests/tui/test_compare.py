"""Pilot tests of the Compare screen and the sensitivity scan on the tiny Llama: variants added, run,
picked and undone; a cancelled comparison hands the engine back in the app's plan; both are saved with the
session and shown again when it is opened."""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import replace

import pytest
from textual.widgets import Static

from tests.tui.conftest import consistent, settle, tiny_factory
from workbench.domain.plan import Plan
from workbench.infra.errors import Cancelled
from workbench.features.compare.screen import CompareScreen, CompareTable
from workbench.tui.widgets.activity import Activity
from workbench.tui.widgets.block_pane import BlockPane


async def add_owl_variant(pilot) -> None:
    """a, then owl (the list is sorted: owl, uniform), the plan's method, the plan's target."""
    for keys in (["a"], ["up", "enter"], ["enter"], ["enter"]):
        await pilot.press(*keys)
        await pilot.pause()


async def test_add_variants_run_use_a_column_and_undo(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        assert isinstance(app.screen, CompareScreen)
        await pilot.press("p")
        await add_owl_variant(pilot)
        assert [name for name, _, _ in app.controller.variants.columns] == ["current", "owl"]
        await pilot.press("r")
        await settle(pilot)
        comparison = app.controller.variants.comparison
        assert [r.name for r in comparison.results] == ["current", "owl"] and app.controller.variants.queued == []
        assert comparison.best("perplexity") in ("current", "owl") and comparison.dense_probe("perplexity")
        assert consistent(app) and app.controller.plan == Plan()  # back in the user's plan
        table = app.screen.query_one(CompareTable)
        assert table.row_count == 7 and len(table.columns) == 4  # label, dense, current, owl
        await pilot.press("enter")  # the cursor is on owl, the column added last
        await settle(pilot)
        assert not isinstance(app.screen, CompareScreen)
        assert app.controller.plan == comparison.result("owl").plan and consistent(app)
        assert app.controller.history.current.label == "variant owl"
        assert [b.target for b in app.controller.state.blocks] == pytest.approx(comparison.result("owl").block_targets)
        await pilot.press("u")
        await settle(pilot)
        assert app.controller.plan == Plan() and consistent(app)


async def test_a_cancelled_comparison_keeps_what_finished_and_gives_the_plan_back(make_app):
    waiting, gate = threading.Event(), threading.Event()

    def gated_engine(**_):
        engine = tiny_factory()
        probe = engine.probe

        def gated(names=("perplexity",), size="quick", progress=None, cancel=None):
            if engine.plan is not None and engine.plan.allocator == "owl":  # the second variant waits
                waiting.set()
                while not gate.wait(0.02):
                    if cancel is not None and cancel():
                        raise Cancelled()
            return probe(names, size, progress, cancel)

        engine.probe = gated
        return engine

    app = make_app(engine_factory=gated_engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("right")  # the plan the engine must come back in
        await settle(pilot)
        await pilot.press("c", "p")
        await add_owl_variant(pilot)
        await pilot.press("r")
        while not waiting.is_set():
            await asyncio.sleep(0.02)
        assert "comparing variants" in str(app.query_one("#sparsity-line").render())
        status = str(app.screen.query_one("#compare-status", Static).render())
        assert "running 2 variants (esc cancels)" in status and "to run (r)" not in status
        await until(pilot, lambda: "esc cancels · comparison · [2/2] owl" in app.screen.query_one(Activity).label)
        await pilot.press("escape")  # cancels, the screen stays
        await settle(pilot)
        assert isinstance(app.screen, CompareScreen) and "comparison cancelled" in app.notices
        assert [r.name for r in app.controller.variants.comparison.results] == ["current"]
        assert [name for name, _ in app.controller.variants.queued] == ["owl"]
        assert app.controller.plan.block_overrides == {0: pytest.approx(0.51)} and consistent(app)
        await pilot.press("escape")  # nothing runs: back to the blocks
        assert not isinstance(app.screen, CompareScreen)


async def test_comparison_and_sensitivity_are_saved_and_shown_again(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
        scan = app.controller.sensitivity
        assert scan.probe == "kl" and len(scan.deltas) == 4 and all(d is not None for d in scan.deltas)
        assert app.screen.has_class("-heat") and consistent(app)
        heat = str(app.query_one("#block-0", BlockPane).row.query_one(".heat").render())
        assert heat.strip()[0] in "▁▂▃▄▅▆▇█"
        await pilot.press("c", "p", "r")
        await settle(pilot)
        await pilot.press("c", "ctrl+s", *"run.toml", "enter")
        await settle(pilot)
        await pilot.pause(0.2)
        assert not app.controller.dirty
    reopened = make_app(session=tmp_path / "run.toml")
    async with reopened.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert reopened.controller.sensitivity.deltas == pytest.approx(scan.deltas)
        assert reopened.screen.has_class("-heat")
        await pilot.press("c")
        assert [name for name, _, result in reopened.controller.variants.columns if result] == ["current"]
        assert len(reopened.screen.query_one(CompareTable).columns) == 3


async def until(pilot, done, timeout: float = 30.0) -> None:
    """Wait (bounded) until `done()`."""
    for _ in range(int(timeout / 0.05)):
        if done():
            return
        await pilot.pause(0.05)
    raise AssertionError("not reached in time")


def comparison_with_intervals():
    """The snapshots' three variants (uniform, owl, sparsegpt/owl), with per-unit results so that each
    score carries its change's 95% interval against dense and the best of a row can be marked."""
    from tests.tui.test_snapshots import hand_built_comparison
    from workbench.probes import Units

    def with_units(result, shift: float):
        if result.name == "perplexity":  # 16 chunks of 64 tokens; exp(mean NLL) is the score
            nll = [math.log(result.score) * 64 + shift * ((i % 5) - 2) for i in range(16)]
            units = Units(nll, [64.0] * 16, "exp")
        else:
            right = round(result.score * 20)
            units = Units([1.0 if (i * 7 + int(shift)) % 20 < right else 0.0 for i in range(20)])
        return replace(result, score=units.score(), units={"score": units})

    comparison = hand_built_comparison()
    comparison.dense = [with_units(p, 0.0) for p in comparison.dense]
    for n, variant in enumerate(comparison.results):
        variant.probes = [with_units(p, 3.0 * (n + 1)) for p in variant.probes]
    return comparison


async def test_three_variants_fit_80_columns_and_the_labels_stay_when_scrolled(make_app):
    """Each score shows its change's interval on a second line: the label column, dense and three
    variants fit 80 columns; with a fourth the table scrolls and the labels stay put."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.controller.variants.comparison = comparison_with_intervals()
        await pilot.press("c")
        await pilot.pause(0.3)
        table = app.screen.query_one(CompareTable)
        lines = [table.render_line(y).text for y in range(table.size.height)]
        assert table.virtual_size.width <= table.scrollable_content_region.width <= 80
        assert "sparsegpt/owl" in lines[0] and any("★ 30.0 (+12)" in line for line in lines)
        assert any("[+8.957,+15.1]" in line for line in lines)  # the interval, under its score
        assert table.get_row_at(3)[2].plain == "41.3 (+23)\n[+21.7,+24.5]"
        app.controller.variants.add("current", app.controller.plan)
        app.controller.variants.add("sparsegpt/uniform 60%", Plan(method="sparsegpt", sparsity=0.6))
        app.screen.refresh_view()
        await pilot.pause()
        assert table.virtual_size.width > table.scrollable_content_region.width
        table.scroll_to(x=table.max_scroll_x, animate=False)
        await pilot.pause()
        assert table.scroll_x > 0
        lines = [table.render_line(y).text for y in range(table.size.height)]
        assert lines[1].startswith(" method ") and lines[4].startswith(" perplexity ")
        assert "sparsegpt/uniform 60%" in lines[0] and "dense" not in lines[0]  # scrolled past dense
