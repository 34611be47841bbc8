"""Keeping the engine on the plan being edited: edits re-prune after a short pause, full prunes, probes, the
work that waits until the current plan is applied, and lending the engine to a feature's exclusive job.
The controller decides what to run; this submits it to the job layer and renders what comes back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from textual.app import App

from workbench.app.controller import PruneJob
from workbench.domain.plan import Plan
from workbench.jobs.results import NeedsFullPrune, Probed, Pruned

if TYPE_CHECKING:
    from textual.timer import Timer


DEBOUNCE_S = 0.3  # the pause after an edit before its re-prune


class Pruning:
    """See the module docstring; one per app."""

    def __init__(self, app: App):
        self.app = app
        self.controller = app.controller
        self.jobs = app.jobs
        self._pause: Timer | None = None  # the short pause after an edit, before its re-prune
        self.opted_in = False  # the opt-in probes (reasoning) are in the probe runs

    @property
    def results(self) -> dict[type, Callable]:
        return {Pruned: self.pruned, NeedsFullPrune: self.needs_full_prune, Probed: self.probed}

    # ----- edits --------------------------------------------------------------------------------------
    def edit(self, plan: Plan, label: str, source: object = None) -> None:
        """Record an edit and re-prune after a short pause (a newer edit restarts the pause). Quick
        repeated edits from one `source` are one step in the history."""
        if self.controller.edit(plan, label, source):
            self.plan_changed()

    def plan_changed(self) -> None:
        """The current plan changed (an edit, undo, redo, a variant used): probes stop, a re-prune follows."""
        self.jobs.cancel("probe")
        self.stop_pause()
        self._pause = self.app.set_timer(DEBOUNCE_S, self.run_prune)
        self.app.blocks.show_structure()
        self.app.save_recovery()
        self.app.refresh_header()

    def undo_or_redo(self, redo: bool) -> None:
        label = self.controller.redo() if redo else self.controller.undo()
        if label is None:
            self.app.notify(f"nothing to {'redo' if redo else 'undo'}")
            return
        self.plan_changed()
        self.app.notify(f"{'redid' if redo else 'undid'} {label}")

    def stop_pause(self) -> None:
        if self._pause is not None:
            self._pause.stop()
            self._pause = None

    # ----- prunes -------------------------------------------------------------------------------------
    def run_prune(self, calibrate: Plan | None = None) -> None:
        """Re-prune the current plan in the background: after a full calibration-aware prune of `calibrate`
        when given (newer edits do not cancel it), else incrementally from cached statistics (a newer edit
        cancels it). Edits made while a full prune runs are applied incrementally when it is done."""
        self.stop_pause()
        self.app.user_cancelled = False
        job = self.controller.prune_job(calibrate=calibrate)
        if job is not None:
            self._start(job)

    def _start(self, job: PruneJob) -> None:
        if job.full:
            self.jobs.cancel("prune")
            self.app.show_activity("calibrating", 0.0, cancellable=True)
            self.jobs.submit("full_prune", spec=job)
        else:
            self.app.show_activity("re-pruning", 0.0, cancellable=True)
            self.jobs.submit("prune", spec=job)

    def needs_full_prune(self, message: NeedsFullPrune) -> None:
        self.run_prune(calibrate=self.controller.plan)

    def pruned(self, message: Pruned) -> None:
        """A state from a prune: show it, then run what waited for it or the prune that follows."""
        if self.jobs.engine is None:
            return
        landing = self.controller.landed(message.state, message.plan, message.targets, message.final, message.full)
        self.app.blocks.show_state(move_sliders=landing.current)
        self._follow(landing)
        self.app.features["plots"].redraw(histogram=message.final)

    def _follow(self, landing) -> None:
        for action in landing.follow_ups:
            action()
        if landing.prune is not None:
            self._start(landing.prune)

    def when_applied(self, action: Callable[[], None]) -> None:
        """Run `action` now if the current plan is applied and nothing re-prunes, else once it is."""
        if self.controller.edit_pending:
            self.run_prune()
        if self.controller.when_applied(action):
            self.run_prune()

    def cancel(self) -> None:
        """Cancel re-pruning, probes, a comparison or a scan; every linear is left fully old or fully new
        (a comparison or a scan re-establishes the current plan when it gives the engine back)."""
        if not self.jobs.cancellable() and not self.controller.edit_pending:
            return
        self.stop_pause()
        self.controller.cancel()
        self.app.user_cancelled = True
        self.jobs.cancel()
        if not self.controller.lent:
            self.jobs.submit("hold")  # shows what the engine holds once the cancelled job has let go of it

    # ----- lending the engine -------------------------------------------------------------------------
    def lend(self, what: str, restore: Plan | None) -> None:
        """Hand the engine to an exclusive job (see `Controller.lend`); probes of the current plan stop."""
        self.jobs.cancel("probe")
        self.controller.lend(what, restore)
        self.app.user_cancelled = False
        self.app.show_activity(what, 0.0, cancellable=True)
        self.app.refresh_header()

    def engine_back(self, holds: Plan | None) -> None:
        """The exclusive job gave the engine back: run what waited, or re-establish the current plan."""
        self._follow(self.controller.returned(holds))
        self.app.refresh_header()

    # ----- probes -------------------------------------------------------------------------------------
    def probe(self) -> None:
        """Run the quick probes on the current plan once it is applied (cancel with escape)."""
        self.when_applied(lambda: self.app.start_job("probe", f"{len(self.probe_list())} probes",
                                                     names=tuple(self.probe_list())))

    def probed(self, message: Probed) -> None:
        self.controller.probes_done(message.results, message.dense, message.plan)
        self.app.save_recovery()
        self.app.refresh_header()
        self.app.features["plots"].redraw(histogram=False)

    def probe_list(self) -> list[str]:
        """The probes the app runs: those it was given (else the default ones), plus the opt-in ones when added."""
        from workbench.probes import default_probes, opt_in_probes

        names = list(self.app.probe_names) if self.app.probe_names is not None else default_probes()
        return names + [n for n in opt_in_probes() if self.opted_in and n not in names]

    def toggle_opt_in(self) -> None:
        """Add the opt-in probes (reasoning) to the probe runs, or take them out."""
        from workbench.probes import opt_in_probes

        self.opted_in = not self.opted_in
        names = ", ".join(opt_in_probes())
        self.app.notify(f"{names}: in the probe runs (t), tens of seconds more" if self.opted_in
                        else f"{names}: out of the probe runs")
