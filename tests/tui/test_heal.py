"""Pilot tests of healing in the app on the tiny Llama: h heals the current plan as a job and shows the
probes before and after; save keeps the trained tensors beside the session; an edit undoes the healing;
escape cancels a run, the model is as before, and h resumes it from its checkpoint."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.tui.conftest import consistent, settle
from workbench.domain.session import load_session
from workbench.features.heal.screen import HealScreen
from workbench.recovery import train


async def test_heal_shows_before_and_after_saves_the_tensors_and_an_edit_undoes_it(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        pruned = app.engine.weights_digest()
        await pilot.press("h")
        await settle(pilot)
        assert isinstance(app.screen, HealScreen) and app.engine.healing is not None
        record = app.controller.healing
        assert record.curve.heldout[-1] < record.curve.heldout[0] and len(record.curve.loss) == record.spec.steps
        table = app.screen.query_one("#heal-table")
        assert table.row_count == 1 and table.get_row_at(0)[0] == "perplexity"
        change = float(table.get_row_at(0)[4].split()[0])  # the text shows 3 decimals
        assert app.controller.probes[0].score - record.before[0].score == pytest.approx(change, abs=5e-4)
        assert consistent(app) and app.engine.weights_digest() != pruned
        await pilot.press("escape", "ctrl+s", *"healed.toml", "enter")
        await settle(pilot)
        await pilot.pause(0.2)
        saved = load_session(tmp_path / "healed.toml").sections["heal"]
        assert saved.file == "healed.heal.safetensors" and (tmp_path / saved.file).is_file()
        await pilot.press("right")  # an edit: the plan changes, the healing goes
        await settle(pilot)
        assert app.engine.healing is None and consistent(app)


async def test_opening_a_healed_session_puts_its_healing_back(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("h")
        await settle(pilot)
        healed = app.engine.weights_digest()
        await pilot.press("escape", "ctrl+s", *"healed.toml", "enter")
        await settle(pilot)
        await pilot.pause(0.2)
    again = make_app(session=tmp_path / "healed.toml")
    async with again.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for _ in range(100):  # the restore job follows the prune
            if again.engine.healing is not None and not again.running_groups:
                break
            await pilot.pause(0.1)
        await settle(pilot)
        assert again.engine.healing is not None and again.engine.weights_digest() == healed and consistent(again)
        assert again.controller.healing.digest == app.controller.healing.digest
        assert any("healing put back from healed.heal.safetensors" in n for n in again.notices)


async def test_escape_cancels_healing_and_h_resumes_from_the_checkpoint(make_app, monkeypatch):
    waiting, gate = threading.Event(), threading.Event()
    windows = train.step_windows

    def gated(stream, spec, step):
        if step == 3 and not gate.is_set():
            waiting.set()
            gate.wait(10)
        return windows(stream, spec, step)

    monkeypatch.setattr(train, "step_windows", gated)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        pruned = app.engine.weights_digest()
        await pilot.press("h")
        while not waiting.is_set():
            await asyncio.sleep(0.02)
        await pilot.press("escape")
        gate.set()
        await settle(pilot)
        assert app.engine.healing is None and app.engine.weights_digest() == pruned and consistent(app)
        checkpoint = app.features["heal"].checkpoint
        assert checkpoint.is_file() and any("h resumes" in n for n in app.notices)
        await pilot.press("h")
        await settle(pilot)
        assert isinstance(app.screen, HealScreen) and not checkpoint.exists()
        assert len(app.controller.healing.curve.loss) == app.controller.healing.spec.steps


async def test_compare_screen_heals_each_variant_run_as_its_own_column(make_app):
    from workbench.features.compare.screen import CompareScreen, CompareTable

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("c", "p", "h")
        assert "healed too (h)" in str(app.screen.query_one("#compare-status").render())
        await pilot.press("r")
        await settle(pilot)
        comparison = app.controller.variants.comparison
        assert [(r.name, r.healed) for r in comparison.results] == [("current", False), ("current+heal", True)]
        assert comparison.heal["steps"] == 100 and isinstance(app.screen, CompareScreen)
        assert len(app.screen.query_one(CompareTable).columns) == 4  # label, dense, current, current+heal
        assert consistent(app)
