"""The app's agent runs: start, step, pause and stop them in a background worker (a run borrows the
engine until it ends), show their progress and use their allocation."""

from __future__ import annotations

from textual import work

from workbench.app import edits
from workbench.domain.plan import Plan
from workbench.infra.errors import WorkbenchError
from workbench.tui.jobs.worker import WorkerJob
from workbench.tui.messages import AgentHalted, AgentStepped
from workbench.tui.screens.agent import AgentScreen


class AgentJobs:
    """The Agent screen's runs, mixed into `WorkbenchApp` (a Textual `App`). Expects of it: `controller`,
    `engine`, `_agent_pause` (a `threading.Event`), `_agent_use`, `_agent_stop`, `_user_cancelled`,
    `_has_model()`, `_when_applied(action)`, `_lend(what, restore)`, `_activity(...)`, `_engine_back(holds)`,
    `_plan_changed()`, `_run_prune(calibrate)` and `_refresh_header()`."""

    def action_agent(self) -> None:
        """The Agent screen: an agent-guided allocation run on the current plan's method."""
        if not self._has_model() or self.controller.state is None or isinstance(self.screen, AgentScreen):
            return
        if self.controller.agent_form is None:
            self.controller.agent_form = edits.AgentForm.defaults()
        self.push_screen(AgentScreen(self.controller), self._agent_screen_closed)

    def _agent_screen_closed(self, _) -> None:
        """A run is paused only while its screen shows: leaving stops it."""
        if self.controller.agent_paused:
            self._stop_agent(self.controller.agent_run)

    def on_agent_screen_run_requested(self, _: AgentScreen.RunRequested) -> None:
        if self.controller.agent_paused:
            self._step_agent(self.controller.agent_run)
        else:
            self._when_applied(self._start_agent)

    def _start_agent(self) -> None:
        """A new run with the Agent screen's settings; it borrows the engine until it ends."""
        from workbench.agent.loop import AgentRun
        from workbench.agent.policies import make_policy

        controller = self.controller
        if controller.lent:
            return
        form, scan = controller.agent_form, controller.sensitivity
        settings = form.settings()
        try:
            run = AgentRun(self.engine, form.plan_for(controller.plan), make_policy(form.policy, settings), settings,
                           sensitivity=scan.deltas if scan else None)
        except WorkbenchError as error:
            self.notify(str(error), severity="error", timeout=10)
            return
        controller.agent_run, self._agent_use, self._agent_stop = run, False, False
        self._lend("agent run", self.engine.calibrated_with or controller.plan)
        self._step_agent(run)

    def _step_agent(self, run) -> None:
        """Start (or resume) stepping `run` in the worker."""
        self.controller.agent_stepping = True
        self._agent_pause.clear()
        self._user_cancelled = False
        self._activity("agent run", None, cancellable=True)
        self._agent_worker(run)
        self._refresh_agent()

    @work(thread=True, exclusive=True, group="agent", exit_on_error=False)
    def _agent_worker(self, run) -> None:
        """Step until the run ends or is paused; after a cancel or a failure the engine is at the run's last
        checkpoint. It stays lent to the run until the run has ended."""
        job = WorkerJob(self, "agent")
        try:
            while not job.cancelled() and not self._agent_pause.is_set():
                record = run.step(job.progress, job.cancelled)
                if record is None:
                    break
                job.post(AgentStepped(record))
        finally:
            self.post_message(AgentHalted(run, run.engine.plan))

    def on_agent_stepped(self, _: AgentStepped) -> None:
        self._refresh_agent()

    def on_agent_halted(self, message: AgentHalted) -> None:
        """The run ended (its allocation is used if asked, the engine comes back), or paused: out of sight a
        run is stopped instead, unless it was asked to stop already (a cancelled stop stays paused)."""
        controller, run = self.controller, message.run
        controller.agent_stepping = False
        if run.done:
            if self._agent_use and run is controller.agent_run:
                self._agent_use = False
                self._use_agent(calibrate=None)
            self._engine_back(message.holds)
        elif not any(isinstance(s, AgentScreen) for s in self.screen_stack) and not self._agent_stop:
            self._stop_agent(run)
        self._refresh_agent()

    def on_agent_screen_pause_requested(self, _: AgentScreen.PauseRequested) -> None:
        self._agent_pause.set()
        self.notify("pausing after this step")

    def on_agent_screen_stop_requested(self, _: AgentScreen.StopRequested) -> None:
        self._stop_agent(self.controller.agent_run)

    def _stop_agent(self, run) -> None:
        """End `run`: its next step finishes it (the final allocation goes on the engine)."""
        self._agent_stop = True
        run.stop()
        self._agent_pause.clear()
        if not self.controller.agent_stepping:
            self._step_agent(run)

    def on_agent_screen_use_requested(self, _: AgentScreen.UseRequested) -> None:
        """Make the run's allocation the current plan, with the statistics it was measured with; a run not
        ended yet is stopped first and used when it has ended."""
        run = self.controller.agent_run
        self.screen.dismiss()
        if run.done:
            self._use_agent(calibrate=run.start_plan())
        else:
            self._agent_use = True
            self._stop_agent(run)
            self.notify("stopping the agent; its allocation is used when it has ended")

    def _use_agent(self, calibrate: Plan | None) -> None:
        if self.controller.use_agent(calibrate):
            self._plan_changed()
            if calibrate is not None:
                self._run_prune(calibrate=calibrate)
            self.notify("using the agent's allocation (u undoes)")

    def _refresh_agent(self) -> None:
        """Redraw the Agent screen (when it is open) and the header."""
        for screen in self.screen_stack:
            if isinstance(screen, AgentScreen):
                screen.refresh_view()
        self._refresh_header()
