"""The app's pruning state and its scheduling decisions, without any UI: the plan being edited and its
history, the plan the engine has applied and the state it shows, the latest probe results, whether there
are unsaved edits, whether an edit waits for its re-prune, and the work queued until a prune lands; the
variants of the Compare screen with their comparison, the sensitivity scan, and the Agent screen's settings
and run with the log of the run whose allocation was used. While a comparison, a scan or an agent run has
the engine (it prunes other plans meanwhile), prunes and queued work wait until it is back; an agent run
keeps it from its start until it ends, also while paused.

The app's handlers drive it (they own the timers and widgets); what runs it asks of `running`, the job
layer's `Jobs.running` (groups "prune" and "calibrate"). It never calls the engine, so it is tested without
Textual or a model. UI-free.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from workbench.app.edits import AgentForm
from workbench.app.history import EditHistory
from workbench.domain.plan import Plan, weighted_mean

if TYPE_CHECKING:
    from workbench.agent.loop import AgentRun
    from workbench.agent.record import AgentLog
    from workbench.studies.compare import Comparison, VariantResult
    from workbench.engine.facade import Engine, EngineState
    from workbench.probes import ProbeResult
    from workbench.studies.sensitivity import Sensitivity
    from workbench.domain.session import Session

FollowUp = Callable[[], None]
Running = Callable[..., bool]
PRUNING = ("prune", "calibrate")  # the job groups that prune the current plan


@dataclass(frozen=True)
class PruneJob:
    """A prune to run: `plan` applied incrementally from cached statistics, after a full calibration-aware
    prune of `calibrate` when that is set (a full prune is not cancelled by newer edits)."""

    plan: Plan
    calibrate: Plan | None = None

    @property
    def full(self) -> bool:
        return self.calibrate is not None


@dataclass(frozen=True)
class Landing:
    """What follows a state from a prune worker: `current` when it was computed for the plan being
    edited; `follow_ups` to run now (the current plan is applied); `prune` to start when a full prune of
    an older plan landed and the current plan still needs its incremental prune."""

    current: bool
    follow_ups: list[FollowUp] = field(default_factory=list)
    prune: PruneJob | None = None


class CompareVariants:
    """The Compare screen's variants: those measured (`comparison`, with its results, saved with the session)
    and those queued (`queued`, not measured yet)."""

    def __init__(self, comparison: Comparison | None = None) -> None:
        self.comparison = comparison
        self.queued: list[tuple[str, Plan]] = []

    @property
    def columns(self) -> list[tuple[str, Plan, VariantResult | None]]:
        """(name, plan, result) of the measured variants, then of the queued ones (result None)."""
        measured = [(r.name, r.plan, r) for r in self.comparison.results] if self.comparison else []
        return measured + [(name, plan, None) for name, plan in self.queued]

    def add(self, name: str, plan: Plan) -> str:
        """Queue a variant; `name` gets a number when it is taken ("owl 2"). Returns the name given."""
        taken = {column[0] for column in self.columns}
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = f"{name} {n}"
        self.queued.append((unique, plan))
        return unique

    def remove(self, name: str) -> bool:
        """Drop a variant, queued or measured (with its results). True when the comparison changed."""
        self.queued = [(n, p) for n, p in self.queued if n != name]
        if self.comparison is None or not any(r.name == name for r in self.comparison.results):
            return False
        self.comparison = dataclasses.replace(
            self.comparison, results=[r for r in self.comparison.results if r.name != name])
        return True

    def merge(self, comparison: Comparison) -> None:
        """Results of a comparison run (or what finished before a cancel): they join the comparison
        (replacing results of the same name), and the variants measured leave the queue."""
        names = {r.name for r in comparison.results}
        self.queued = [(n, p) for n, p in self.queued if n not in names]
        old = self.comparison
        if old is not None:
            dense = {p.name: p for p in old.dense + comparison.dense}
            comparison = dataclasses.replace(
                comparison, probes=old.probes + [p for p in comparison.probes if p not in old.probes],
                dense=list(dense.values()), results=[r for r in old.results if r.name not in names] + comparison.results,
                outlier_ratios=comparison.outlier_ratios or old.outlier_ratios, heal=comparison.heal or old.heal)
        self.comparison = comparison

    def variant(self, name: str) -> tuple[Plan, str] | None:
        """The edit of making a measured variant the current plan; None for a queued one."""
        if self.comparison is None or not any(r.name == name for r in self.comparison.results):
            return None
        return self.comparison.result(name).plan, f"variant {name}"


class Controller:
    """The plan, its edit history and what the engine has made of it; see the module docstring."""

    def __init__(self, running: Running = lambda *groups: False) -> None:
        self.running = running  # whether a job of any of the groups given runs (the job layer's answer)
        self.plan: Plan | None = None
        self.history: EditHistory | None = None
        self.applied_plan: Plan | None = None
        self.state: EngineState | None = None
        self.targets: dict[str, float] = {}
        self.probes: list[ProbeResult] = []
        self.probes_plan: Plan | None = None
        self.dense_probes: dict[str, ProbeResult] = {}
        self.session_path: Path | None = None
        self.dirty = False
        self.variants = CompareVariants()  # the Compare screen's, with their comparison
        self.sensitivity: Sensitivity | None = None
        self.agent_form: AgentForm | None = None  # the Agent screen's settings, made when it first opens
        self.agent_run: AgentRun | None = None  # the Agent screen's run, until the next one or another session
        self.agent_stepping = False  # a worker steps the agent run
        self.agent: AgentLog | None = None  # the log of the run whose allocation was used (saved with the session)
        self._edit_pending = False
        self._follow_ups: list[FollowUp] = []
        self._lent: str | None = None  # what has the engine: "comparing variants", "sensitivity scan"
        self._restore: Plan | None = None  # the full prune that gives the current plan back its statistics

    # ----- loading ------------------------------------------------------------------------------------
    def start(self, applied: Plan | None) -> Plan | None:
        """A model is loaded without a session: edit the plan the engine holds (`applied`, when it was
        loaded before) or the default plan. Returns the plan to calibrate with first (None when the
        engine's statistics serve)."""
        plan = applied or Plan()
        self._begin(plan, applied, EditHistory(plan))
        self.probes, self.probes_plan, self.dense_probes = [], None, {}
        self.variants, self.sensitivity, self.agent, self.healing = CompareVariants(), None, None, None
        return None if applied is not None else plan

    def open(self, session: Session, path: Path, restored: bool, applied: Plan | None) -> Plan:
        """A session file was read (`restored`: it is the recovery file, so its edits are still unsaved).
        Returns the plan to calibrate with: the one the session was calibrated with."""
        plan = session.plan
        self._begin(plan, applied, EditHistory.from_records(session.history, plan))
        self.probes, self.probes_plan = list(session.probes), plan
        self.dense_probes = {p.name: p for p in session.dense_probes}
        self.variants = CompareVariants(session.sections.get("comparison"))
        self.sensitivity, self.agent = session.sections.get("sensitivity"), session.sections.get("agent")
        self.healing = None  # set again once the session's healing is back on the model (the heal feature)
        self.session_path = None if restored else path
        self.dirty = restored
        return session.calibrated_with or plan

    def _begin(self, plan: Plan, applied: Plan | None, history: EditHistory) -> None:
        self.plan, self.applied_plan, self.history = plan, applied, history
        if self.agent_run is not None and self.agent_run.done:  # one still going keeps the engine: kept
            self.agent_run = None
        self._edit_pending = False
        self._follow_ups.clear()

    @property
    def loaded(self) -> bool:
        """Whether there is a plan to edit (a model is loaded)."""
        return self.plan is not None

    # ----- edits --------------------------------------------------------------------------------------
    def edit(self, plan: Plan, label: str, source: object = None, now: float | None = None) -> bool:
        """Record an edit; quick repeated edits from one `source` (a slider key) are one history step.
        False when `plan` is the current plan (nothing to do)."""
        if plan == self.plan:
            return False
        self.history.push(label, plan, source, time.monotonic() if now is None else now)
        self._set_plan(plan)
        return True

    def undo(self) -> str | None:
        """Go back one edit; its label, or None when there is nothing to undo."""
        undone = self.history.current.label
        edit = self.history.undo()
        if edit is None:
            return None
        self._set_plan(edit.plan)
        return undone

    def redo(self) -> str | None:
        """Redo the edit just undone; its label, or None when there is nothing to redo."""
        edit = self.history.redo()
        if edit is None:
            return None
        self._set_plan(edit.plan)
        return edit.label

    def _set_plan(self, plan: Plan) -> None:
        self.plan = plan
        self.dirty = True
        self._edit_pending = True

    # ----- scheduling ---------------------------------------------------------------------------------
    @property
    def edit_pending(self) -> bool:
        """An edit waits for its re-prune (the app's short pause after the last edit is running)."""
        return self._edit_pending

    @property
    def applied(self) -> bool:
        """Whether the engine holds the current plan."""
        return self.plan is not None and self.applied_plan == self.plan

    def prune_job(self, calibrate: Plan | None = None) -> PruneJob | None:
        """The prune to start now for the current plan (the pending edit is then taken care of): the full
        prune of `calibrate` when given, else an incremental one; None while a full prune runs, since the
        current plan is re-pruned when it lands, and while the engine is lent (it is re-pruned when back)."""
        self._edit_pending = False
        if self._lent is not None:
            self._restore = calibrate or self._restore
            return None
        if calibrate is not None:
            return PruneJob(self.plan, calibrate)
        if self.running("calibrate"):
            return None
        return PruneJob(self.plan)

    def when_applied(self, action: FollowUp) -> bool:
        """Run `action` now if the current plan is applied and nothing prunes, else queue it until a prune
        of the current plan lands. True when the caller must start that prune (nothing prunes yet, and
        the engine is not lent)."""
        pruning = self.running(*PRUNING)
        if self.applied and not pruning and self._lent is None:
            action()
            return False
        self._follow_ups.append(action)
        return not pruning and self._lent is None

    def landed(self, state: EngineState, plan: Plan, targets: dict[str, float], final: bool,
               full: bool) -> Landing:
        """A state from a prune worker: `targets` are `plan`'s per-linear targets, `final` marks the end of
        the prune and `full` the end of a full one."""
        current = plan == self.plan
        self.state = state
        if final:
            self.applied_plan = plan
        if final and full:
            self._restore = None
        if current:
            self.targets = targets
        if final and current:
            follow_ups, self._follow_ups = self._follow_ups, []
            return Landing(True, follow_ups)
        return Landing(current, prune=PruneJob(self.plan) if final and full else None)

    def cancel(self) -> None:
        """The user cancelled: the pending edit and the queued work are dropped."""
        self._edit_pending = False
        self._follow_ups.clear()

    def prune_failed(self) -> None:
        """A prune failed: the work queued for its landing is dropped."""
        self._follow_ups.clear()

    def note(self) -> str | None:
        """Why the state shown is not the current plan's ("re-pruning", or "not applied" after a cancel or
        a failure, or what has the engine); None when it is."""
        if self._lent is not None:
            return "agent run paused (A)" if self.agent_paused else self._lent
        if self.applied:
            return None
        if self._edit_pending or self.running(*PRUNING) or self._follow_ups:
            return "re-pruning"
        return "not applied (p prunes)"

    # ----- probes and sessions ------------------------------------------------------------------------
    def probes_done(self, results: list[ProbeResult], dense: dict[str, ProbeResult], plan: Plan) -> None:
        """Probe results on the pruned model (`plan` applied); the history keeps them for the current plan."""
        self.probes, self.dense_probes, self.probes_plan = results, dense, plan
        if plan == self.plan:
            self.history.record_probes({r.name: r.score for r in results})
        self.dirty = True

    @property
    def probes_stale(self) -> bool:
        """Whether the probe results shown were measured before the last edit."""
        return self.probes_plan != self.plan

    # ----- lending the engine: comparisons, sensitivity scans and agent runs -----------------------------------------------
    def lend(self, what: str, restore: Plan | None) -> None:
        """A comparison, a sensitivity scan or an agent run (`what`) takes the engine. `restore`: the plan to
        calibrate with afterwards, since the engine comes back holding statistics of its own (None: it comes
        back in the plan it was given). A restore still pending (an earlier one was cancelled) is kept."""
        self._lent, self._restore, self.applied_plan = what, restore or self._restore, None

    @property
    def restoring(self) -> Plan | None:
        """The full prune that gives the current plan back its statistics, while one is owed."""
        return self._restore

    @property
    def lent(self) -> bool:
        """Whether a comparison, a scan or an agent run has the engine."""
        return self._lent is not None

    def returned(self, holds: Plan | None) -> Landing:
        """The engine is back, holding `holds`: run the queued work now when that is the current plan and
        nothing needs calibrating, else prune (the queued work then waits for that prune)."""
        self._lent, self.applied_plan = None, holds
        if self._restore is not None:
            return Landing(False, prune=PruneJob(self.plan, self._restore))
        if not self.applied:
            return Landing(False, prune=PruneJob(self.plan))
        follow_ups, self._follow_ups = self._follow_ups, []
        return Landing(True, follow_ups)

    def compared(self, comparison: Comparison) -> None:
        """A comparison run gave results: they join the Compare screen's variants (`CompareVariants.merge`)."""
        self.variants.merge(comparison)
        self.dirty = True

    def remove_variant(self, name: str) -> None:
        """Drop a Compare screen variant; dropping a measured one changes the saved comparison."""
        if self.variants.remove(name):
            self.dirty = True

    def scanned(self, sensitivity: Sensitivity) -> None:
        """A sensitivity scan finished."""
        self.sensitivity = sensitivity
        self.dirty = True

    @property
    def agent_paused(self) -> bool:
        """Whether the agent run stopped stepping before it ended (it keeps the engine until it ends)."""
        return self.agent_run is not None and not self.agent_run.done and not self.agent_stepping

    def use_agent(self, calibrate: Plan | None) -> bool:
        """Make the agent run's allocation the current plan (one edit) and keep the run's log for the session.
        `calibrate`: the full prune that gives the plan the statistics the run measured with (None: the
        engine holds them, as the run has just applied the plan). False when it is the current plan."""
        run = self.agent_run
        self.agent, self._restore, self.dirty = run.log(), calibrate, True
        return self.edit(run.final_plan(), "agent allocation")

    @property
    def current_probes(self) -> list[ProbeResult]:
        """The probe results of the current plan (none after an edit)."""
        return [] if self.probes_stale else list(self.probes)

    def saved(self, path: Path) -> None:
        """The session was written to `path`: nothing is unsaved."""
        self.session_path = Path(path)
        self.dirty = False

    def recovery_session(self, engine: Engine, device: str, dtype: str, theme: str) -> Session:
        """What the recovery file holds: the current plan (applied or not), its history, probes, comparison,
        sensitivity scan and agent log."""
        from workbench.domain.session import Session, current_versions

        return Session(
            model=engine.loaded.spec, device=device, dtype=dtype, calibration=engine.calibration, plan=self.plan,
            calibrated_with=self._restore or engine.calibrated_with or self.plan, history=self.history.to_records(),
            probes=self.current_probes, dense_probes=list(self.dense_probes.values()), theme=theme,
            versions=current_versions(), sections=self.sections(),
        )

    def sections(self) -> dict:
        """The features' session tables (workbench.domain.sections): comparison, sensitivity scan, agent log."""
        return {"comparison": self.variants.comparison, "sensitivity": self.sensitivity, "agent": self.agent,
                "heal": self.healing}

    # ----- what the screens show ----------------------------------------------------------------------
    def block_targets(self) -> list[float]:
        """The parameter-weighted target of each block in the state shown (the current plan's targets
        where known)."""
        return [weighted_mean((self.targets.get(x.name, x.target) for x in b.linears), (x.numel for x in b.linears))
                for b in self.state.blocks]

    def default_linear(self, block: int = 0) -> str:
        """The linear a block stands for in the histogram: its last one (the MLP down projection)."""
        return self.state.blocks[block].linears[-1].name
