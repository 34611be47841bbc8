"""The Agent feature: opens the Agent screen, starts, steps, pauses and stops agent runs as jobs (a run
holds the engine until it ends), shows their progress and uses their allocation."""

from __future__ import annotations

import threading
from typing import Callable

from workbench.app import edits
from workbench.domain.plan import Plan
from workbench.infra.errors import WorkbenchError
from workbench.features.agent.job import KIND, AgentHalted, AgentStepped
from workbench.features.agent.screen import AgentScreen
from workbench.tui.commands import Command
from workbench.tui.feature import FEATURES, Feature


@FEATURES.add
class AgentFeature(Feature):
    """See the module docstring."""

    name = "agent"
    order = 4
    commands = (Command("app.agent", "A", "feature('agent')", "Agent", show=False,
                        tooltip="Agent screen: a loop raises blocks step by step and rolls back harmful steps "
                                "(pause, stop, use)",
                        palette="Agent", about="Agent-guided allocation: run it step by step, then use its allocation"),)
    help = ("Agent screen (A)", AgentScreen.BINDINGS)
    screens = (AgentScreen,)
    jobs = (KIND,)

    def __init__(self, app):
        super().__init__(app)
        self.pause_event = threading.Event()  # the agent job stops stepping after the current step
        self.use_when_ended = False  # use the agent run's allocation once it has ended
        self.stopping = False  # the agent run was asked to stop

    @property
    def results(self) -> dict[type, Callable]:
        return {AgentStepped: self.stepped, AgentHalted: self.halted}

    def start(self) -> None:
        """The Agent screen: an agent-guided allocation run on the current plan's method."""
        app = self.app
        if not app.has_model() or app.controller.state is None or isinstance(app.screen, AgentScreen):
            return
        if app.controller.agent_form is None:
            app.controller.agent_form = edits.AgentForm.defaults()
        app.push_screen(AgentScreen(self, app.controller), self._closed)

    def _closed(self, _) -> None:
        """A run is paused only while its screen shows: leaving stops it."""
        if self.app.controller.agent_paused:
            self.stop()

    def run(self) -> None:
        """Resume the paused run, else start one once the current plan is applied."""
        if self.app.controller.agent_paused:
            self._step(self.app.controller.agent_run)
        else:
            self.app.pruning.when_applied(self._new_run)

    def _new_run(self) -> None:
        """A new run with the Agent screen's settings; it holds the engine until it ends."""
        from workbench.agent.loop import AgentRun
        from workbench.agent.policies import make_policy

        app, controller = self.app, self.app.controller
        if controller.lent:
            return
        form, scan = controller.agent_form, controller.sensitivity
        settings = form.settings()
        try:
            run = AgentRun(app.engine, form.plan_for(controller.plan), make_policy(form.policy, settings), settings,
                           sensitivity=scan.deltas if scan else None)
        except WorkbenchError as error:
            app.notify(str(error), severity="error", timeout=10)
            return
        controller.agent_run, self.use_when_ended, self.stopping = run, False, False
        app.pruning.lend("agent run", app.engine.calibrated_with or controller.plan)
        self._step(run)

    def _step(self, run) -> None:
        """Start (or resume) stepping `run` in a job."""
        app = self.app
        app.controller.agent_stepping = True
        self.pause_event.clear()
        app.user_cancelled = False
        app.show_activity("agent run", None, cancellable=True)
        app.jobs.submit("agent", run=run, pause=self.pause_event)
        self.refresh()

    def stepped(self, _: AgentStepped) -> None:
        self.refresh()

    def halted(self, message: AgentHalted) -> None:
        """The run ended (its allocation is used if asked, the engine comes back), or paused: out of sight a
        run is stopped instead, unless it was asked to stop already (a cancelled stop stays paused)."""
        app, run = self.app, message.run
        controller = app.controller
        controller.agent_stepping = False
        if run.done:
            if self.use_when_ended and run is controller.agent_run:
                self.use_when_ended = False
                self._use(calibrate=None)
            app.pruning.engine_back(message.holds)
        elif not any(isinstance(s, AgentScreen) for s in app.screen_stack) and not self.stopping:
            self.stop(run)
        self.refresh()

    def pause(self) -> None:
        self.pause_event.set()
        self.app.notify("pausing after this step")

    def stop(self, run=None) -> None:
        """End `run` (default: the controller's): its next step finishes it (the final allocation goes on the
        engine)."""
        run = run or self.app.controller.agent_run
        self.stopping = True
        run.stop()
        self.pause_event.clear()
        if not self.app.controller.agent_stepping:
            self._step(run)

    def use(self) -> None:
        """Make the run's allocation the current plan, with the statistics it was measured with; a run not
        ended yet is stopped first and used when it has ended."""
        app = self.app
        run = app.controller.agent_run
        app.screen.dismiss()
        if run.done:
            self._use(calibrate=run.start_plan())
        else:
            self.use_when_ended = True
            self.stop(run)
            app.notify("stopping the agent; its allocation is used when it has ended")

    def _use(self, calibrate: Plan | None) -> None:
        app = self.app
        if app.controller.use_agent(calibrate):
            app.pruning.plan_changed()
            if calibrate is not None:
                app.pruning.run_prune(calibrate=calibrate)
            app.notify("using the agent's allocation (u undoes)")

    def refresh(self) -> None:
        """Redraw the Agent screen (when it is open) and the header."""
        for screen in self.app.screen_stack:
            if isinstance(screen, AgentScreen):
                screen.refresh_view()
        self.app.refresh_header()
