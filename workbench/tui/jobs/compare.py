"""The app's comparison and sensitivity jobs: start them in background workers (they borrow the engine),
show their results."""

from __future__ import annotations

from textual import work

from workbench.app.format import PROBE_LABELS, heat_cells
from workbench.domain.plan import Plan
from workbench.tui.jobs.worker import BORROWING, WorkerJob
from workbench.tui.messages import Compared, Scanned
from workbench.tui.screens.compare import CompareScreen
from workbench.tui.widgets.block_pane import BlockPane
from workbench.tui.widgets.headings_row import HeadingsRow

SENSITIVITY_PROBE = "perplexity"


class CompareJobs:
    """The Compare screen's runs and the sensitivity scan, mixed into `WorkbenchApp` (a Textual `App`).
    Expects of it: `controller`, `engine`, `_has_model()`, `_when_applied(action)`, `_busy(groups)`,
    `_lend(what, restore)`, `_engine_back(holds)`, `_probe_list()`, `_autosave()`, `_plan_changed()` and
    `_run_prune(calibrate)`."""

    def action_compare(self) -> None:
        if self._has_model() and self.controller.state is not None:
            self.push_screen(CompareScreen(self.controller, self._probe_list()))

    def on_compare_screen_run_requested(self, _: CompareScreen.RunRequested) -> None:
        self._when_applied(self._start_comparison)

    def _start_comparison(self) -> None:
        from workbench.studies.compare import Variant

        variants = [Variant(name, plan) for name, plan in self.controller.queued]
        if not variants or self._busy(BORROWING):
            return
        self._lend("comparing variants", self.engine.calibrated_with or self.controller.plan)
        self._compare_worker(variants, self._probe_list())

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def _compare_worker(self, variants: list, probes: list[str]) -> None:
        """Run the comparison; what finished comes back also after a cancel or a failure, when the engine
        is free again."""
        from workbench.studies.compare import Comparison, run_comparison

        job, engine, finished, comparison = WorkerJob(self, "compare"), self.engine, [], None
        try:
            comparison = run_comparison(engine, variants, probes, progress=job.progress, cancel=job.cancelled,
                                        on_result=finished.append)
        finally:
            if comparison is None:
                dense = [engine.dense_probes[n] for n in probes if n in engine.dense_probes]
                comparison = Comparison(probes, dense=dense, results=finished)
            self.post_message(Compared(comparison, engine.plan))

    def on_compared(self, message: Compared) -> None:
        if message.comparison.results:
            self.controller.compared(message.comparison)
            self._autosave()
        self._engine_back(message.holds)
        for screen in self.screen_stack:
            if isinstance(screen, CompareScreen):
                screen.refresh_view()

    def on_compare_screen_use_requested(self, message: CompareScreen.UseRequested) -> None:
        """Make a measured variant the current plan (one undoable edit), with the full prune it was
        measured with."""
        plan, label = self.controller.variant(message.variant)
        self.pop_screen()
        if self.controller.edit(plan, label):
            self._plan_changed()
            self._run_prune(calibrate=plan)
            self.notify(f"using {message.variant} (u undoes)")

    def action_sensitivity(self) -> None:
        """Scan the sensitivity of each block on the current plan (cancel with escape)."""
        if not self._has_model():
            return
        if self.controller.plan.pattern:
            self.notify(f"pattern {self.controller.plan.pattern} fixes every block; n picks unstructured",
                        severity="warning")
            return
        self._when_applied(self._start_sensitivity)

    def _start_sensitivity(self) -> None:
        if self._busy(BORROWING):
            return
        self._lend("sensitivity scan", None)
        self._sensitivity_worker(self.controller.plan)

    @work(thread=True, exclusive=True, group="sensitivity", exit_on_error=False)
    def _sensitivity_worker(self, plan: Plan) -> None:
        """Scan every block; the engine comes back in `plan` also after a cancel or a failure."""
        from workbench.studies.sensitivity import scan

        job, result = WorkerJob(self, "sensitivity"), None
        try:
            result = scan(self.engine, plan, probe=SENSITIVITY_PROBE, progress=job.progress, cancel=job.cancelled)
        finally:
            self.post_message(Scanned(result, self.engine.plan))

    def on_scanned(self, message: Scanned) -> None:
        if message.sensitivity is not None:
            self.controller.scanned(message.sensitivity)
            self._show_heat()
            self._autosave()
        self._engine_back(message.holds)

    def _show_heat(self) -> None:
        """The sensitivity column next to the block sliders (hidden when there is no scan)."""
        scan = self.controller.sensitivity
        self.screen_stack[0].set_class(scan is not None, "-heat")
        if scan is None:
            return
        from workbench.probes import PROBES

        self.query_one(HeadingsRow).show_heat(f"Δ{PROBE_LABELS.get(scan.probe, scan.probe)}")
        for pane, cell in zip(self.query(BlockPane), heat_cells(scan.deltas, PROBES.get(scan.probe).higher_is_better)):
            pane.show_column("heat", cell)
