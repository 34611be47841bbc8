"""Pilot tests of the Agent screen on the tiny Llama with the built-in policy: settings typed, a few steps
run, paused and resumed, stopped, a step cancelled; the allocation used as one undoable edit and saved with
the session; the agent allocator picked from the allocator picker opens the Agent screen instead of running
the loop unseen; LayerIF's influence scores in the block panes and the allocation plot."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.tui.conftest import consistent, settle, tiny_factory
from workbench.agent.record import ACCEPTED
from workbench.domain.plan import Plan
from workbench.infra.errors import Cancelled
from workbench.features.agent.screen import AgentScreen
from workbench.tui.screens.params import ParamsScreen
from workbench.tui.widgets.plots import InfluencePlot


async def until(pilot, condition, timeout: float = 60.0) -> None:
    """Wait (bounded) until `condition()` holds."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.05)
    await pilot.pause()


class Gate:
    """An engine factory whose quick probes each wait for a permit (the agent measures one per step,
    one at its start and one when it stops short), so a test decides when each step may end."""

    def __init__(self):
        self.permits = threading.Semaphore(0)

    def open(self, count: int = 100) -> None:
        """Let `count` more probes through."""
        self.permits.release(count)

    def __call__(self, **_):
        engine = tiny_factory()
        probe = engine.probe

        def gated(names=("perplexity",), size="quick", progress=None, cancel=None):
            while not self.permits.acquire(timeout=0.02):
                if cancel is not None and cancel():
                    raise Cancelled()
            return probe(names, size, progress, cancel)

        engine.probe = gated
        return engine


@pytest.fixture
def gated(make_app) -> tuple[Gate, object]:
    """An app on the gated tiny model, and its gate."""
    gate = Gate()
    return gate, make_app(engine_factory=gate)


async def open_agent(pilot, max_steps: int) -> None:
    """Once the model is in: A, then the settings, max steps typed (the fourth field)."""
    await settle(pilot)
    await pilot.press("A")
    assert isinstance(pilot.app.screen, AgentScreen)
    await pilot.press("e")
    assert isinstance(pilot.app.screen, ParamsScreen)
    await pilot.press("tab", "tab", "tab", *str(max_steps), "enter")
    await pilot.pause()
    assert isinstance(pilot.app.screen, AgentScreen)


async def two_steps_then_pause(pilot, gate: Gate) -> None:
    """r, the start and the first step; space while the second runs, so the run pauses after it."""
    controller = pilot.app.controller
    await pilot.press("r")
    gate.open(2)
    await until(pilot, lambda: controller.agent_run is not None and controller.agent_run.records)
    await pilot.press("space")
    gate.open(1)
    await until(pilot, lambda: not controller.agent_stepping)
    assert controller.agent_paused and controller.lent and len(controller.agent_run.records) == 2


async def test_run_pause_resume_stop_then_use_the_allocation_and_undo(gated):
    gate, app = gated
    async with app.run_test(size=(80, 24)) as pilot:
        await open_agent(pilot, max_steps=3)
        controller = app.controller
        assert controller.agent_form.max_steps == 3 and controller.agent_form.target is None
        await two_steps_then_pause(pilot, gate)
        run = controller.agent_run
        assert "paused" in str(app.screen.query_one("#agent-status").render())
        await pilot.press("r")  # resumes the same run
        gate.open()
        await until(pilot, lambda: run.done and not controller.lent)
        assert controller.agent_run is run and run.stop_reason == "3 steps (max steps)"
        assert [r.index for r in run.records] == [1, 2, 3]
        assert all(r.outcome == ACCEPTED for r in run.records)  # the tiny model takes these small steps well
        sparsities = [r.sparsity for r in run.records]
        assert sparsities == sorted(sparsities) and sparsities[0] > run.start
        await settle(pilot)
        assert controller.plan == Plan() and consistent(app)  # the app's plan is back
        assert app.screen.query_one("DataTable").row_count == 3
        await pilot.press("enter")  # use the allocation
        await settle(pilot)
        assert not isinstance(app.screen, AgentScreen)
        assert controller.plan == run.final_plan() and consistent(app)
        assert controller.history.current.label == "agent allocation" and controller.agent.records == run.records
        assert app.engine.calibrated_with == run.start_plan()  # measured with the run's statistics
        assert "agent 3 steps" in str(app.query_one("#plan-line").render())
        await pilot.press("u")
        await settle(pilot)
        assert controller.plan == Plan() and consistent(app)


async def test_stop_ends_a_paused_run_and_use_stops_a_running_one(gated, make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gate, app = gated
    async with app.run_test(size=(80, 24)) as pilot:
        await open_agent(pilot, max_steps=40)
        controller = app.controller
        await two_steps_then_pause(pilot, gate)
        await pilot.press("x")
        gate.open()
        run = controller.agent_run
        await until(pilot, lambda: run.done and not controller.lent)
        assert run.stop_reason == "stopped" and run.final_score is not None and len(run.records) == 2
        assert "stopped: stopped, KL" in str(app.screen.query_one("#agent-status").render())
        await settle(pilot)
        assert controller.plan == Plan() and consistent(app)
        gate.permits = threading.Semaphore(0)
        await pilot.press("r")  # a new run; enter while it runs stops it, then uses it
        gate.open(2)
        await until(pilot, lambda: controller.agent_run is not run and controller.agent_run.records)
        second = controller.agent_run
        await pilot.press("enter")
        assert not isinstance(app.screen, AgentScreen)
        gate.open()
        await until(pilot, lambda: second.done)
        await settle(pilot)
        assert controller.plan == second.final_plan() and consistent(app) and len(second.records) == 2
        assert controller.agent.records == second.records and controller.dirty
        await pilot.press("ctrl+s", *"run.toml", "enter")
        await settle(pilot)
        await pilot.pause(0.2)
        assert not controller.dirty
    reopened = make_app(session=tmp_path / "run.toml")
    async with reopened.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert reopened.controller.plan == second.final_plan()
        assert [r.to_dict() for r in reopened.controller.agent.records] == [r.to_dict() for r in second.records]


async def test_escape_cancels_the_step_and_leaving_stops_a_paused_run(gated):
    gate, app = gated
    async with app.run_test(size=(80, 24)) as pilot:
        await open_agent(pilot, max_steps=40)
        controller = app.controller
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("escape")  # cancels the step running (the first: its start waits for the gate)
        await until(pilot, lambda: not controller.agent_stepping)
        assert isinstance(app.screen, AgentScreen) and controller.agent_paused and "agent step cancelled" in app.notices
        assert "agent run paused" in str(app.query_one("#sparsity-line").render())
        await pilot.press("escape")  # nothing runs: back, and the paused run is stopped
        assert not isinstance(app.screen, AgentScreen)
        gate.open()
        await until(pilot, lambda: controller.agent_run.done and not controller.lent)
        await settle(pilot)
        assert controller.plan == Plan() and consistent(app) and controller.agent_run.records == []


async def test_picking_the_agent_allocator_opens_the_agent_screen(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("a", "home", "enter")  # the list is sorted: agent first
        await pilot.pause()
        assert isinstance(app.screen, AgentScreen) and app.controller.plan == Plan() and not app.controller.lent
        await pilot.press("A")
        await pilot.press("a", "home", "down", "enter")  # layerif: numbers and words in the header, no crash
        await settle(pilot)
        plan_line = str(app.query_one("#plan-line").render())
        assert app.controller.plan.allocator == "layerif" and "estimator=datainf" in plan_line
        assert app.screen.has_class("-influence")
        scores = [b.influence for b in app.controller.state.blocks]
        assert all(s is not None for s in scores)
        assert str(app.query_one("#block-0 .influence").render()).strip()
        await pilot.press("v")  # the allocation plot shows the scores too
        await pilot.pause(0.3)
        assert app.screen.query_one(InfluencePlot).has_class("-shown")
        await pilot.press("v", "o")  # the params screen edits its numbers and words
        assert isinstance(app.screen, ParamsScreen)
        await pilot.press("escape")
