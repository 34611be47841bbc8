"""Fixtures for the app tests: the tiny seeded Llama behind the engine factory, a private recovery file,
and a helper that waits until background work is done."""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest
import torch

from tests.conftest import make_engine
from workbench.tui.app import WorkbenchApp


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run `async def` tests in a fresh event loop (no async plugin needed)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = pyfuncitem._fixtureinfo.argnames
        asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
        return True
    return None


def tiny_factory(**_):
    """Engine factory for the app: ignores the model spec and builds the 4-block tiny Llama."""
    return make_engine()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model is fastest on one thread, and a busy 2-core machine stalls with more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    """Build a WorkbenchApp on the tiny model with its recovery file under tmp_path."""
    monkeypatch.delenv("NO_COLOR", raising=False)

    def build(**kwargs) -> WorkbenchApp:
        options = dict(engine_factory=tiny_factory, recovery_path=tmp_path / "recovery.toml",
                       probe_names=("perplexity",))
        options.update(kwargs)
        app = WorkbenchApp(**options)
        app.notices = []
        shown = app.notify

        def notify(message, **kw):
            app.notices.append(str(message))
            shown(message, **kw)

        app.notify = notify
        return app

    return build


def consistent(app: WorkbenchApp) -> bool:
    """The app's plan is what the engine holds, and the state shown is the engine's."""
    engine, shown = app.engine.state(), app.controller.state
    return (app.engine.plan == app.controller.plan and app.controller.applied
            and [b.achieved for b in engine.blocks] == [b.achieved for b in shown.blocks])


def idle(app: WorkbenchApp) -> bool:
    """True when the current plan is applied and no job, worker or pending edit is left."""
    busy = app.running_groups or any(w.is_running or w.state.name == "PENDING" for w in app.workers)
    return app.controller.applied and not app.controller.edit_pending and not busy


async def settle(pilot, timeout: float = 60.0) -> None:
    """Wait (bounded) until the app is idle, then let the screen catch up."""
    start = time.monotonic()
    while not idle(pilot.app):
        if time.monotonic() - start > timeout:
            raise AssertionError("background work did not finish in time")
        await asyncio.sleep(0.05)
    await pilot.pause()
    await pilot.pause()

