"""Pilot test of the opt-in reasoning probe in the app: R adds it to t's probe runs (not in the default
runs), the probe line shows its accuracy and thinking length, and the plots' probes tab draws accuracy
per thinking budget, dense and pruned."""

from __future__ import annotations

from tests.tui.conftest import settle
from workbench.features.plots.screen import PlotsScreen
from workbench.probes import default_probes, opt_in_probes
from workbench.tui.widgets.plots import BudgetPlot


def test_reasoning_is_opt_in():
    assert "reasoning" in opt_in_probes() and "reasoning" not in default_probes()


async def test_r_adds_the_reasoning_probe(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.pruning.probe_list() == ["perplexity"]
        await pilot.press("R")
        assert app.pruning.probe_list() == ["perplexity", "reasoning"] and "reasoning" in app.notices[-1]
        await pilot.press("t")
        await settle(pilot, timeout=180)
        names = [r.name for r in app.controller.probes]
        assert names == ["perplexity", "reasoning"] and "reasoning" in app.controller.dense_probes
        budgets = app.controller.probes[1].details["budgets"]
        assert sorted(budgets, key=int) == ["64", "128"]
        await pilot.press("v", "3")
        await settle(pilot)
        assert isinstance(app.screen, PlotsScreen)
        assert app.screen.query_one(BudgetPlot).has_class("-shown")
        await pilot.press("escape", "R")
        assert app.pruning.probe_list() == ["perplexity"]
