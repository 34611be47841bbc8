"""The workbench app: per-block panes with live statistics and sparsity sliders over the engine.

Every number on screen comes from the engine (`workbench.engine.facade`); the app turns key presses into plans
and hands them to its `Controller`, which keeps the plan, its history and what to prune next. Heavy work
runs in thread workers (one group per kind: engine, calibrate, prune, probe, save, compare, sensitivity,
agent) that never touch widgets: they post messages, and errors end up in `on_worker_state_changed` as
notifications. The engine is safe to call from any thread; a cancelled worker finishes its current
linear and stops. A comparison, a sensitivity scan or an agent run borrows the engine (it prunes other
plans): the controller holds prunes back until the engine is given back (an agent run keeps it until the
run ends, also while paused), then re-establishes the current plan. Comparisons, scans and agent runs
are mixins from `workbench.tui.jobs`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, NoReturn

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.theme import Theme
from textual.timer import Timer
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState

from workbench.app import edits
from workbench.app.controller import Controller, PruneJob
from workbench.app.edits import BlockKey, GlobalKey, LinearKey
from workbench.domain.plan import CalibrationSpec, Plan
from workbench.infra.errors import Cancelled, WorkbenchError, out_of_memory
from workbench.tui.commands import COMMANDS
from workbench.app.format import (Cell, Scale, cells_markup, depth_cells, global_width_cell, influence_cells, params,
                                  pct, structured, width_cells)
from workbench.tui.jobs.agent import AgentJobs
from workbench.tui.jobs.compare import CompareJobs
from workbench.tui.jobs.worker import BORROWING, WorkerJob
from workbench.tui.messages import (DropsChosen, EngineReady, FullPruneNeeded, ProbesDone, Saved, StateChanged,
                                    WorkProgress)
from workbench.app.recovery import (Autosave, claim_recovery, clear_recovery, default_recovery_path,
                                    describe_recovery, release_recovery)
from workbench.app.themes import ThemeSpec, default_theme_name, load_themes
from workbench.tui.screens.agent import AgentScreen
from workbench.tui.screens.compare import CompareScreen, CompareTable
from workbench.tui.screens.confirm import ConfirmScreen
from workbench.tui.screens.help import HelpScreen
from workbench.tui.screens.params import ParamsScreen
from workbench.tui.screens.path_prompt import PathPrompt
from workbench.tui.screens.picker import PickerScreen
from workbench.tui.screens.plots import PlotsScreen
from workbench.tui.widgets.activity import Activity
from workbench.tui.widgets.block_pane import BlockPane
from workbench.tui.widgets.header import WorkbenchHeader
from workbench.tui.widgets.headings_row import HeadingsRow
from workbench.tui.widgets.slider import Slider
from workbench.tui.widgets.stat_row import StatRow

if TYPE_CHECKING:
    from workbench.engine.facade import Engine

DEBOUNCE_S = 0.3
REFRESH_S = 0.25
APP_ACTIONS = {c.action_name for c in COMMANDS}
EDITING_ACTIONS = {"save_as", "open", "prune", "pick", "allocator_params", "focus_global", "plots", "compare",
                   "sensitivity", "agent", "narrower", "wider", "width_reset", "drop", "drop_by", "block_scores"}
PRUNING = ("prune", "calibrate")
CANCELLABLE = ("prune", "calibrate", "probe", "scores", *BORROWING)
ENGINE_GROUPS = ("engine", "prune", "calibrate", "probe", "save", "scores", *BORROWING)
CANCELLED = {"probe": "probes", "compare": "comparison", "sensitivity": "sensitivity scan",
             "agent": "agent step", "scores": "block scores"}  # else "pruning"
OTHER_SCREENS = (PlotsScreen, CompareScreen, AgentScreen)  # full screens over the blocks
UNSTRUCTURED = "unstructured"
PATTERNS = [(UNSTRUCTURED, "any weight may go; sliders set each block and linear"),
            ("2:4", "2 of every 4 consecutive inputs are zero (50%, fixed)"),
            ("4:8", "4 of every 8 consecutive inputs are zero (50%, fixed)")]

EngineFactory = Callable[..., "Engine"]


def load_engine(model: str, device: str, dtype: str, calibration: CalibrationSpec, progress) -> Engine:
    """The default engine factory: `Engine.load`."""
    from workbench.engine.facade import Engine

    return Engine.load(model, device=device, dtype=dtype, calibration=calibration, progress=progress)


def held_state(engine: Engine) -> StateChanged:
    """What the engine holds now, as the landing of a prune (after a cancel, or with new block scores)."""
    plan = engine.plan
    return StateChanged(engine.state(), plan, engine.allocate(plan) if plan is not None else {}, final=True, full=False)


def textual_theme(spec: ThemeSpec) -> Theme:
    """A Textual theme from a parsed theme file."""
    return Theme(name=spec.name, dark=spec.dark, variables=dict(spec.variables), **spec.colors)


@dataclass(frozen=True)
class Picker:
    """One of the app's choices (method, pattern, allocator, theme): a dialog on its key, and one
    command-palette entry per option ("Method: wanda"). `choose` gets the option picked."""

    name: str
    title: str
    options: Callable[[], list[tuple[str, str]]]
    current: Callable[[], str]
    choose: Callable[[str], None]
    needs_model: bool = True


class WorkbenchApp(CompareJobs, AgentJobs, App):
    """Hand-tune per-block sparsity: sliders, live statistics, background re-pruning, probes, sessions."""

    CSS_PATH = "app.tcss"
    TITLE = "workbench"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    BINDINGS = [command.binding() for command in COMMANDS]

    def __init__(self, model: str = "embedded", session: str | Path | None = None, theme: str | None = None,
                 device: str = "auto", dtype: str = "auto", *, engine_factory: EngineFactory | None = None,
                 calibration: CalibrationSpec | None = None, probe_names: Iterable[str] | None = None,
                 recovery_path: Path | None = None, themes_directory: Path | None = None):
        super().__init__()
        self.model_spec = model
        self.session_arg = Path(session) if session else None
        self.device = device
        self.dtype = dtype
        self.engine_factory = engine_factory or load_engine
        self.calibration = calibration
        self.probe_names = tuple(probe_names) if probe_names is not None else None
        self.recovery_path = recovery_path or default_recovery_path()
        self.recovery = None
        self.autosave: Autosave | None = None
        specs, self._theme_errors = load_themes(themes_directory)
        self.theme_names = [s.name for s in specs]
        for spec in specs:
            self.register_theme(textual_theme(spec))
        wanted = theme or default_theme_name()
        if wanted not in self.available_themes:
            self._theme_errors.append(f"theme {wanted!r} not found; using {self.theme_names[0] if self.theme_names else 'textual-dark'}")
            wanted = self.theme_names[0] if self.theme_names else "textual-dark"
        self.theme = wanted

        self.engine: Engine | None = None
        self.controller = Controller()
        self.selected_linear: str | None = None
        self._pause: Timer | None = None  # the short pause after an edit, before its re-prune
        self._user_cancelled = False
        self._loading_path: Path | None = None
        self._agent_pause = threading.Event()  # the agent worker stops stepping after the current step
        self._agent_use = False  # use the agent run's allocation once it has ended
        self._agent_stop = False  # the agent run was asked to stop
        self.pickers = {
            "method": Picker("Method", "Pruning method", edits.method_options, lambda: self.controller.plan.method,
                             lambda name: self._edit(*edits.choose_method(self.controller.plan, name))),
            "pattern": Picker("Pattern", "Sparsity pattern", lambda: PATTERNS,
                              lambda: self.controller.plan.pattern or UNSTRUCTURED, self._choose_pattern),
            "allocator": Picker("Allocator", "Allocator (resets the sliders to its allocation)", edits.allocator_options,
                                lambda: self.controller.plan.allocator, self._choose_allocator),
            "width_score": Picker("Width score", "GLU neuron score (which neurons a narrower width keeps)",
                                  edits.width_score_options, lambda: self.controller.plan.structure.width_score,
                                  lambda name: self._edit(*edits.choose_width_score(self.controller.plan, name))),
            "width_divisor": Picker("Width divisor", "Width divisor (kept GLU neurons a multiple of it)",
                                    edits.width_divisor_options, self._width_divisor, self._choose_width_divisor),
            "theme": Picker("Theme", "Theme", lambda: [(name, "") for name in self.theme_names], lambda: self.theme,
                            self._choose_theme, needs_model=False),
        }

    # ----- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield WorkbenchHeader()
        yield Activity()
        yield HeadingsRow()
        yield StatRow(GlobalKey(), "all", "global target", 0.5, classes="global-row")
        with VerticalScroll(id="blocks", can_focus=False):
            yield Static("loading the model…", classes="placeholder")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hang_up)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        for error in self._theme_errors:
            self.notify(error, severity="warning", timeout=8)
        self.query_one(".global-row", StatRow).slider.locked = True
        try:
            self.recovery = claim_recovery(self.recovery_path, adopt=self.session_arg is None)
            self.recovery_path = self.recovery.path
            self.autosave = Autosave(self.recovery_path)
        except WorkbenchError as error:
            self.notify(f"{error}; edits are not autosaved", severity="warning", timeout=10)
        if self.session_arg is not None:
            self._start_loading(path=self.session_arg)
            return
        recovered = describe_recovery(self.recovery_path) if self.recovery is not None else None
        if recovered is None:
            self._start_loading()
            return

        def answer(restore: bool | None) -> None:
            if restore:
                self._start_loading(path=self.recovery_path)
            else:
                clear_recovery(self.recovery_path)
                self._start_loading()

        self.push_screen(ConfirmScreen(f"A session was {recovered} and never saved ({self.recovery_path}). "
                                       "Restore it?", "Restore (y)", "Start fresh (n)"), answer)

    def on_unmount(self) -> None:
        """Give this instance's recovery slot up; a recovery file with unsaved edits stays for the next start."""
        if self.recovery is not None:
            release_recovery(self.recovery)

    def _hang_up(self) -> None:
        """The terminal went away (SIGHUP): leave now; the recovery file already has every edit."""
        self.workers.cancel_all()
        self.exit(return_code=129)

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Over a dialog only quit and help work; on the plots, compare and agent screens also save, probes,
        undo/redo and cancel (the other app keys are disabled and hidden there)."""
        if isinstance(self.screen, ModalScreen) and action not in ("quit", "help") and action in APP_ACTIONS:
            return False
        if isinstance(self.screen, OTHER_SCREENS) and action in EDITING_ACTIONS:
            return False
        return True

    # ----- background work ----------------------------------------------------------------------------
    @property
    def running_groups(self) -> frozenset[str]:
        """The worker groups with work pending or running (engine, calibrate, prune, probe, save...)."""
        return frozenset(w.group for w in self.workers if w.state in (WorkerState.PENDING, WorkerState.RUNNING))

    def _busy(self, groups: Iterable[str] = ENGINE_GROUPS) -> bool:
        return not self.running_groups.isdisjoint(groups)

    def _activity(self, message: str, fraction: float | None, cancellable: bool = False) -> None:
        """Show what runs in the activity line of every screen that has one."""
        for activity in self.query(Activity):
            activity.show(message, fraction, cancellable)

    def _start_loading(self, path: Path | None = None) -> None:
        self._loading_path = path
        self._activity(f"reading {path}" if path else f"loading {self.model_spec}", None)
        self._load_worker(self.model_spec, path)

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def _load_worker(self, model: str, path: Path | None) -> None:
        """Load a model (or reuse the loaded one) and, for a session, read and check the file."""
        from workbench.domain.session import check_against_model, load_session

        job = WorkerJob(self, "engine")
        session = load_session(path) if path is not None else None
        if session is not None:
            model, device, dtype, calibration = session.model, session.device, session.dtype, session.calibration
        else:
            device, dtype, calibration = self.device, self.dtype, self.calibration or CalibrationSpec()
        engine = self.engine
        if engine is None or engine.loaded.spec != model or engine.calibration != calibration:
            job.progress(f"loading {model}")
            engine = self.engine_factory(model=model, device=device, dtype=dtype, calibration=calibration,
                                         progress=job.progress)
        if session is not None:
            check_against_model(session, engine, path)
        job.post(EngineReady(engine, len(engine.linears), session, path))

    def on_engine_ready(self, message: EngineReady) -> None:
        new_engine = message.engine is not self.engine
        self.engine = message.engine
        session = message.session
        if session is not None:
            restored = Path(message.path) == self.recovery_path
            calibrate = self.controller.open(session, Path(message.path), restored, self.engine.plan)
            self.device, self.dtype = session.device, session.dtype
            if session.theme in self.available_themes:
                self.theme = session.theme
            self.notify(f"{'restored' if restored else 'opened'} {message.path}")
        else:
            calibrate = self.controller.start(self.engine.plan)
        if new_engine or len(self.query(BlockPane)) != message.blocks:
            self._build_panes(message.blocks, self.controller.plan.sparsity)
            self.controller.state = None
        self._show_heat()
        self._refresh_header()
        self._run_prune(calibrate)

    def _build_panes(self, blocks: int, value: float) -> None:
        """One pane per block; sliders start at the global target until the allocation arrives."""
        holder = self.query_one("#blocks", VerticalScroll)
        holder.remove_children()
        holder.mount_all([BlockPane(index, value) for index in range(blocks)])
        self.call_after_refresh(self._focus_first_block)

    def _focus_first_block(self) -> None:
        panes = list(self.query(BlockPane))
        if panes and self.screen is self.screen_stack[0]:
            panes[0].row.slider.focus()

    def _stop_pause(self) -> None:
        if self._pause is not None:
            self._pause.stop()
            self._pause = None

    def _run_prune(self, calibrate: Plan | None = None) -> None:
        """Re-prune the current plan in the background: after a full calibration-aware prune of `calibrate`
        when given (newer edits do not cancel it), else incrementally from cached statistics (a newer edit
        cancels it). Edits made while a full prune runs are applied incrementally when it is done."""
        self._stop_pause()
        self._user_cancelled = False
        job = self.controller.prune_job(full_running=self._busy(("calibrate",)), calibrate=calibrate)
        if job is not None:
            self._start_prune(job)

    def _start_prune(self, job: PruneJob) -> None:
        if job.full:
            self.workers.cancel_group(self, "prune")
            self._activity("calibrating", 0.0, cancellable=True)
            self._full_prune_worker(job)
        else:
            self._activity("re-pruning", 0.0, cancellable=True)
            self._prune_worker(job)

    @work(thread=True, exclusive=True, group="calibrate", exit_on_error=False)
    def _full_prune_worker(self, job: PruneJob) -> None:
        self._prune_in_worker(job, WorkerJob(self, "calibrate"))

    @work(thread=True, exclusive=True, group="prune", exit_on_error=False)
    def _prune_worker(self, job: PruneJob) -> None:
        self._prune_in_worker(job, WorkerJob(self, "prune"))

    def _prune_in_worker(self, job: PruneJob, run: WorkerJob) -> None:
        """The body of both prune workers (in the worker's thread). An incremental prune that finds no
        usable statistics hands over to a full one."""
        engine, plan = self.engine, job.plan
        if run.cancelled():
            return
        if not job.full and engine.needs_full_prune(plan):
            run.post(FullPruneNeeded(plan))
            return
        engine.prepare(plan, progress=run.progress, cancel=run.cancelled)
        targets = engine.allocate(plan)
        run.post(StateChanged(engine.state(), plan, targets, final=False, full=False))
        last = time.monotonic()

        def progress(message: str, fraction: float) -> None:
            nonlocal last
            run.progress(message, fraction)
            if not run.cancelled() and time.monotonic() - last >= REFRESH_S:
                last = time.monotonic()
                run.post(StateChanged(engine.state(), plan, targets, final=False, full=False))

        if job.full:
            engine.prune(job.calibrate, progress, run.cancelled)
        engine.apply(plan, progress, run.cancelled)
        run.post(StateChanged(engine.state(), plan, targets, final=True, full=job.full))

    def on_full_prune_needed(self, message: FullPruneNeeded) -> None:
        self._run_prune(calibrate=self.controller.plan)

    def on_state_changed(self, message: StateChanged) -> None:
        if self.engine is None:
            return
        landing = self.controller.landed(message.state, message.plan, message.targets, message.final, message.full)
        self._show_state(move_sliders=landing.current)
        for action in landing.follow_ups:
            action()
        if landing.prune is not None:
            self._start_prune(landing.prune)
        if isinstance(self.screen, PlotsScreen):
            self.screen.refresh_plots(histogram=message.final)

    def _engine_back(self, holds: Plan | None) -> None:
        """A comparison or a scan gave the engine back: run what waited, or re-establish the current plan."""
        landing = self.controller.returned(holds)
        for action in landing.follow_ups:
            action()
        if landing.prune is not None:
            self._start_prune(landing.prune)
        self._refresh_header()

    def _lend(self, what: str, restore: Plan | None) -> None:
        """Hand the engine to a comparison or a scan (see `Controller.lend`); probes of the current plan stop."""
        self.workers.cancel_group(self, "probe")
        self.controller.lend(what, restore)
        self._user_cancelled = False
        self._activity(what, 0.0, cancellable=True)
        self._refresh_header()

    def _show_state(self, move_sliders: bool) -> None:
        state, plan = self.controller.state, self.controller.plan
        locked = bool(plan.pattern)
        targets = self.controller.targets if move_sliders and self.controller.targets else None
        scale = Scale.of(state.blocks)
        for pane, block in zip(self.query(BlockPane), state.blocks):
            overridden = {x.name for x in block.linears if x.name in plan.linear_overrides}
            if block.index in plan.block_overrides:
                overridden.add("block")
            pane.show(block, scale, targets, overridden, locked)
        self._show_influence(state)
        self._show_structure()
        row = self.query_one(".global-row", StatRow)
        row.show_target(plan.sparsity, False, locked)
        row.query_one(".stats", Static).update(cells_markup([
            Cell(f"{pct(state.achieved):>6}"),
            Cell(f"{params(state.params_nonzero)} of {params(state.params_total)} left"),
        ]))
        self._refresh_header()

    def _show_influence(self, state) -> None:
        """The influence column next to the block sliders, once LayerIF influence scores are computed."""
        scores = [b.influence for b in state.blocks]
        shown = any(s is not None for s in scores)
        self.screen_stack[0].set_class(shown, "-influence")
        if shown:
            for pane, cell in zip(self.query(BlockPane), influence_cells(scores)):
                pane.show_column("influence", cell)

    def _show_structure(self) -> None:
        """The width column (once the plan or the model shows any structure; dropped blocks dimmed) and the
        depth column (once block scores are computed) next to the block sliders."""
        state, structure = self.controller.state, self.controller.plan.structure
        if state is None:
            return
        screen, panes = self.screen_stack[0], list(self.query(BlockPane))
        shown = structured(structure, state.blocks)
        screen.set_class(shown, "-width")
        for pane, block, cell in zip(panes, state.blocks, width_cells(state.blocks, structure, self.engine.shaper.hidden)):
            pane.set_class(block.index in structure.drop_blocks, "-dropped")
            pane.show_column("width", cell if shown else None)
        self.query_one(".global-row", StatRow).show_column("width", global_width_cell(structure))
        scored = any(b.block_influence is not None for b in state.blocks)
        screen.set_class(scored, "-depth")
        if scored:
            for pane, cell in zip(panes, depth_cells(state.blocks)):
                pane.show_column("depth", cell)

    def _refresh_header(self) -> None:
        controller = self.controller
        if not controller.loaded or self.engine is None:
            return
        from workbench.allocators import ALLOCATORS

        plan, path = controller.plan, controller.session_path
        self.query_one(WorkbenchHeader).show(
            self.engine.loaded.spec, plan, ALLOCATORS.get(plan.allocator).defaults, controller.state,
            controller.note(pruning=self._busy(PRUNING)), path.name if path else None, controller.dirty,
            controller.probes, controller.dense_probes, controller.probes_stale,
        )

    def on_work_progress(self, message: WorkProgress) -> None:
        if self._busy((message.kind,)):
            self._activity(message.message, message.fraction, message.kind in CANCELLABLE)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker outcomes land: errors become notifications, never a crash. The event's own
        state counts: a worker that fails at once is already in ERROR when its PENDING event arrives."""
        worker = event.worker
        if event.state == WorkerState.ERROR:
            error = worker.error
            if not isinstance(error, Cancelled):
                text = str(error) if isinstance(error, WorkbenchError) else \
                    out_of_memory(error) or f"{type(error).__name__}: {error}"
                self.notify(text, title=f"{worker.group} failed", severity="error", timeout=10)
            if worker.group in PRUNING:
                self.controller.prune_failed()
            if worker.group == "engine" and self.engine is None:
                if self._loading_path is not None:
                    self._start_loading()
                    return
                self.query_one(WorkbenchHeader).show_message("no model loaded: ctrl+o opens a session, q quits")
                self.query_one("#blocks .placeholder", Static).update(
                    "No model loaded. ctrl+o opens a session file; q quits.")
        if event.state == WorkerState.CANCELLED and worker.group in CANCELLABLE and self._user_cancelled:
            self.notify(f"{CANCELLED.get(worker.group, 'pruning')} cancelled")
        if worker.state in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED) and not self._busy():
            for activity in self.query(Activity):
                activity.hide()
            self._refresh_header()

    # ----- edits ------------------------------------------------------------------------------------
    def _has_model(self) -> bool:
        if self.engine is None or not self.controller.loaded:
            self.notify("the model is still loading", severity="warning")
            return False
        return True

    def _edit(self, plan: Plan, label: str, source: object = None) -> None:
        """Record an edit and re-prune after a short pause (a newer edit restarts the pause). Quick
        repeated edits from one `source` are one step in the history."""
        if self.controller.edit(plan, label, source):
            self._plan_changed()

    def _plan_changed(self) -> None:
        self.workers.cancel_group(self, "probe")
        self._stop_pause()
        self._pause = self.set_timer(DEBOUNCE_S, self._run_prune)
        self._show_structure()
        self._autosave()
        self._refresh_header()

    def on_slider_changed(self, event: Slider.Changed) -> None:
        if self._has_model():
            key = event.slider.key
            self._edit(*edits.move_slider(self.controller.plan, key, event.value), source=key)

    def on_slider_reset(self, event: Slider.Reset) -> None:
        if self._has_model():
            edit = edits.reset_slider(self.controller.plan, event.slider.key)
            if edit is not None:
                self._edit(*edit)

    def on_slider_refused(self, event: Slider.Refused) -> None:
        plan = self.controller.plan
        if plan is not None and plan.pattern:
            self.notify(f"pattern {plan.pattern} fixes every linear; press n for unstructured to edit targets",
                        severity="warning")
        else:
            self.notify("the model is still loading", severity="warning")

    def on_descendant_focus(self, event) -> None:
        slider = event.widget
        if not isinstance(slider, Slider) or self.controller.state is None:
            return
        match slider.key:
            case LinearKey(name):
                self.selected_linear = name
            case BlockKey(index):
                self.selected_linear = self.controller.default_linear(index)

    def action_undo(self) -> None:
        if self._has_model():
            label = self.controller.undo()
            if label is None:
                self.notify("nothing to undo")
                return
            self._plan_changed()
            self.notify(f"undid {label}")

    def action_redo(self) -> None:
        if self._has_model():
            label = self.controller.redo()
            if label is None:
                self.notify("nothing to redo")
                return
            self._plan_changed()
            self.notify(f"redid {label}")

    def _focused_block(self) -> int | None:
        """The block of the focused slider (a linear's block too); None on the global row."""
        slider = self.screen.focused
        match slider.key if isinstance(slider, Slider) else GlobalKey():
            case BlockKey(index):
                return index
            case LinearKey(name):
                return next(b.index for b in self.controller.state.blocks if any(x.name == name for x in b.linears))
        return None

    def _step_width(self, steps: int) -> None:
        """Move the focused block's expansion ratio (on the global row, the global one) by `steps` steps."""
        if not self._has_model() or self.controller.state is None:
            return
        plan, blocks, hidden = self.controller.plan, self.controller.state.blocks, self.engine.shaper.hidden
        block = self._focused_block()
        if block is None:
            full = max(b.intermediate for b in blocks) / hidden
            self._edit(*edits.set_width(plan, edits.step_ratio(plan.structure.width_ratio, full, steps)),
                       source="width")
            return
        full = blocks[block].intermediate / hidden
        ratio = edits.step_ratio(plan.structure.width_overrides.get(block, plan.structure.width_ratio), full, steps)
        self._edit(*edits.set_block_width(plan, block, full if ratio is None else ratio), source=("width", block))

    def action_narrower(self) -> None:
        self._step_width(-1)

    def action_wider(self) -> None:
        self._step_width(1)

    def action_width_reset(self) -> None:
        """The focused block follows the global width again; on the global row, every block is at full width."""
        if not self._has_model() or self.controller.state is None:
            return
        block, plan = self._focused_block(), self.controller.plan
        self._edit(*(edits.set_width(plan, None) if block is None else edits.reset_block_width(plan, block)))

    def action_drop(self) -> None:
        """Drop the focused block from the forward pass, or bring it back (never every block)."""
        if not self._has_model() or self.controller.state is None:
            return
        block = self._focused_block()
        if block is None:
            self.notify("focus a block to drop it (x)", severity="warning")
            return
        try:
            self._edit(*edits.toggle_drop(self.controller.plan, block, len(self.controller.state.blocks)))
        except ValueError as error:
            self.notify(str(error), severity="warning")

    def action_drop_by(self) -> None:
        """Drop N blocks by a rule (bi, angular) from the dense model's depth scores, or none: one undoable edit."""
        if not self._has_model() or self.controller.state is None:
            return
        current = "bi" if self.controller.plan.structure.drop_blocks else edits.NO_DROPS
        self.push_screen(PickerScreen("Drop blocks by rule", edits.DROP_RULES, current), self._drop_rule_chosen)

    def _drop_rule_chosen(self, rule: str | None) -> None:
        if rule is None:
            return
        if rule == edits.NO_DROPS:
            self._set_drops([], rule)
            return
        count = max(1, len(self.controller.plan.structure.drop_blocks))
        hint = f"blocks to drop by {rule} (the model has {len(self.controller.state.blocks)})"
        self.push_screen(ParamsScreen(f"Drop blocks by {rule}", [(edits.DROP_COUNT, str(count), hint)],
                                      edits.parse_drop_count), partial(self._drop_count_chosen, rule))

    def _drop_count_chosen(self, rule: str, count: int | None) -> None:
        if count is None or self.controller.state is None:
            return
        try:
            edits.check_drop_count(count, len(self.controller.state.blocks))
        except ValueError as error:
            self.notify(str(error), severity="warning")
            return
        self._when_applied(partial(self._start_drop_by, count, rule))

    def _start_drop_by(self, count: int, rule: str) -> None:
        self._user_cancelled = False
        self._activity(f"choosing {count} blocks by {rule}", None, cancellable=True)
        self._drop_by_worker(count, rule)

    @work(thread=True, exclusive=True, group="scores", exit_on_error=False)
    def _drop_by_worker(self, count: int, rule: str) -> None:
        """The blocks `rule` drops (the dense model runs once for the depth scores, if not yet)."""
        job = WorkerJob(self, "scores")
        job.post(DropsChosen(count, rule, self.engine.choose_drops(count, rule, job.progress, job.cancelled)))

    def on_drops_chosen(self, message: DropsChosen) -> None:
        self._set_drops(message.blocks, message.rule)

    def _set_drops(self, chosen: list[int], rule: str) -> None:
        """One undoable edit: exactly the blocks `chosen` are dropped (a refusal is a warning)."""
        if self.controller.state is None:
            return
        try:
            self._edit(*edits.set_drops(self.controller.plan, chosen, len(self.controller.state.blocks), rule))
        except ValueError as error:
            self.notify(str(error), severity="warning")

    def action_block_scores(self) -> None:
        """Compute block influence and angular distance per block (of the dense model, once; esc cancels)."""
        if self._has_model():
            self._when_applied(self._start_block_scores)

    def _start_block_scores(self) -> None:
        if self._busy(("scores",)):
            return
        self._user_cancelled = False
        self._activity("block scores", None, cancellable=True)
        self._block_scores_worker()

    @work(thread=True, exclusive=True, group="scores", exit_on_error=False)
    def _block_scores_worker(self) -> None:
        """Run the dense model once for the depth scores, then show the state with them."""
        job = WorkerJob(self, "scores")
        self.engine.depth_scores(job.progress, job.cancelled)
        job.post(held_state(self.engine))

    def action_focus_global(self) -> None:
        self.screen.set_focus(self.query_one(".global-row", StatRow).slider)

    def action_cancel(self) -> None:
        """Cancel re-pruning, probes, a comparison or a scan; every linear is left fully old or fully new
        (a comparison or a scan re-establishes the current plan when it gives the engine back)."""
        if not self._busy(CANCELLABLE) and not self.controller.edit_pending:
            return
        self._stop_pause()
        self.controller.cancel()
        self._user_cancelled = True
        for group in CANCELLABLE:
            self.workers.cancel_group(self, group)
        if not self.controller.lent:
            self._refresh_after_cancel()

    @work(thread=True, exclusive=True, group="refresh", exit_on_error=False)
    def _refresh_after_cancel(self) -> None:
        """Show what the engine holds once the cancelled worker has let go of it."""
        self.post_message(held_state(self.engine))

    # ----- pickers ----------------------------------------------------------------------------------
    def action_pick(self, kind: str) -> None:
        """Open the picker of `kind` (method, pattern, allocator or theme)."""
        picker = self.pickers[kind]
        if picker.needs_model and not self._has_model():
            return

        def chosen(value: str | None) -> None:
            if value is not None:
                picker.choose(value)

        self.push_screen(PickerScreen(picker.title, picker.options(), picker.current()), chosen)

    def _choose_pattern(self, pattern: str) -> None:
        self._edit(*edits.choose_pattern(self.controller.plan, None if pattern == UNSTRUCTURED else pattern))

    def _width_divisor(self) -> str:
        divisor = self.controller.plan.structure.width_divisor
        return edits.WIDTH_DIVISOR_NONE if divisor is None else str(divisor)

    def _choose_width_divisor(self, value: str) -> None:
        divisor = None if value == edits.WIDTH_DIVISOR_NONE else int(value)
        self._edit(*edits.choose_width_divisor(self.controller.plan, divisor))

    def _choose_theme(self, name: str) -> None:
        self.theme = name
        if self.controller.loaded:
            self._autosave()

    def _choose_allocator(self, name: str) -> None:
        """Another allocator; one that searches (prunes and probes to decide) opens the Agent screen instead,
        so its loop never runs unseen inside a prune (the same allocator keeps its recorded decisions)."""
        if edits.searches(name) and name != self.controller.plan.allocator:
            self.action_agent()
        else:
            self._edit(*edits.choose_allocator(self.controller.plan, name))

    def action_allocator_params(self) -> None:
        """Edit the numeric and word parameters of the plan's allocator; a searching allocator's settings are
        on the Agent screen."""
        if not self._has_model():
            return
        plan = self.controller.plan
        if edits.searches(plan.allocator):
            self.action_agent()
            return
        fields = edits.param_fields(plan.allocator, plan.allocator_params)
        if not fields:
            self.notify(f"{plan.allocator} has no parameters; a picks another allocator")
            return
        parse = partial(edits.parse_allocator_params, plan.allocator)
        self.push_screen(ParamsScreen(f"{plan.allocator} parameters", fields, parse), self._set_allocator_params)

    def _set_allocator_params(self, values: dict | None) -> None:
        if values is not None:
            self._edit(*edits.set_allocator_params(self.controller.plan, values))

    # ----- full prune and probes ----------------------------------------------------------------------
    def action_prune(self) -> None:
        """Re-run the full calibration-aware prune of the current plan (fresh statistics)."""
        if self._has_model():
            self.workers.cancel_group(self, "probe")
            self._run_prune(calibrate=self.controller.plan)

    def _when_applied(self, action: Callable[[], None]) -> None:
        """Run `action` now if the current plan is applied and nothing re-prunes, else once it is."""
        if self.controller.edit_pending:
            self._run_prune()
        if self.controller.when_applied(action, pruning=self._busy(PRUNING)):
            self._run_prune()

    def action_probe(self) -> None:
        """Run the quick probes on the current plan (cancel with escape)."""
        if self._has_model():
            self._when_applied(self._start_probes)

    def _start_probes(self) -> None:
        names = tuple(self._probe_list())
        self._user_cancelled = False
        self._activity(f"{len(names)} probes", None, cancellable=True)
        self._probe_worker(names)

    @work(thread=True, exclusive=True, group="probe", exit_on_error=False)
    def _probe_worker(self, names: tuple[str, ...]) -> None:
        job = WorkerJob(self, "probe")
        engine = self.engine
        if job.cancelled():
            return
        plan = engine.plan
        missing = [n for n in names if n not in engine.dense_probes]
        if missing:
            job.progress(f"measuring the dense model ({len(missing)} probes)")
        results = engine.probe(names, "quick", progress=lambda name, f: job.progress(f"probe {name}", f),
                               cancel=job.cancelled)
        job.post(ProbesDone(results, dict(engine.dense_probes), plan))

    def on_probes_done(self, message: ProbesDone) -> None:
        self.controller.probes_done(message.results, message.dense, message.plan)
        self._autosave()
        self._refresh_header()
        if isinstance(self.screen, PlotsScreen):
            self.screen.refresh_plots(histogram=False)

    def _probe_list(self) -> list[str]:
        """The probes the app runs: those it was given, else every registered one."""
        from workbench.probes import PROBES

        return list(self.probe_names if self.probe_names is not None else PROBES.names())

    # ----- sessions -----------------------------------------------------------------------------------
    def action_save(self) -> None:
        if not self._has_model():
            return
        if self.controller.session_path is None:
            self.action_save_as()
        else:
            self._when_applied(partial(self._start_save, self.controller.session_path))

    def action_save_as(self) -> None:
        if not self._has_model():
            return

        def chosen(path: Path | None) -> None:
            if path is not None:
                self._when_applied(partial(self._start_save, path))

        current = self.controller.session_path
        self.push_screen(PathPrompt("Save the session as (TOML)", str(current) if current else "session.toml"),
                         chosen)

    def _start_save(self, path: Path) -> None:
        controller = self.controller
        self._save_worker(path, controller.history.to_records(), controller.current_probes, self.theme,
                          controller.comparison, controller.sensitivity, controller.agent)

    @work(thread=True, exclusive=True, group="save", exit_on_error=False)
    def _save_worker(self, path: Path, history: list[dict], probes: list, theme: str, comparison, sensitivity,
                     agent) -> None:
        from workbench.domain.session import save_session, session_from_engine

        session = session_from_engine(self.engine, history=history, probes=probes, theme=theme,
                                      device=self.device, dtype=self.dtype)
        session.comparison, session.sensitivity, session.agent = comparison, sensitivity, agent
        save_session(session, path)
        self.post_message(Saved(path))

    def on_saved(self, message: Saved) -> None:
        self.controller.saved(message.path)
        self._clear_recovery()
        self.notify(f"saved {message.path}")
        self._refresh_header()

    def action_open(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is not None:
                for group in CANCELLABLE:
                    self.workers.cancel_group(self, group)
                self._start_loading(path=path)

        current = self.controller.session_path
        self.push_screen(PathPrompt("Open a session file", str(current or ""), must_exist=True), chosen)

    def _autosave(self) -> None:
        """Rewrite the recovery file with the current plan, history and probes (in a worker)."""
        if self.autosave is not None:
            session = self.controller.recovery_session(self.engine, self.device, self.dtype, self.theme)
            self._write_recovery(session, self.autosave.ticket())

    @work(thread=True, group="autosave", exit_on_error=False)
    def _write_recovery(self, session, ticket: int) -> None:
        """Write the recovery file; a failure (disk full...) is one warning until a write succeeds again."""
        error = self.autosave.write(session, ticket)
        if error is not None:
            self.notify(f"autosave failed: {error}; edits are kept in memory until saved", severity="warning",
                        timeout=10)

    def _clear_recovery(self) -> None:
        """Remove this instance's recovery file (never another's) and drop any autosave still queued."""
        if self.autosave is not None:
            self.autosave.clear()

    async def action_quit(self) -> None:
        """Leave at once; unsaved edits stay in the recovery file for the next start."""
        if not self.controller.dirty:
            self._clear_recovery()
        self.workers.cancel_all()
        self.exit()

    # ----- screens ------------------------------------------------------------------------------------
    def action_help(self) -> None:
        sections = [
            ("Anywhere", [b for b in self.BINDINGS if isinstance(b, Binding)]),
            ("On a slider", Slider.BINDINGS),
            ("On a block", BlockPane.BINDINGS),
            ("Plots screen (v)", PlotsScreen.BINDINGS),
            ("Compare screen (c)", [*CompareScreen.BINDINGS, *CompareTable.BINDINGS]),
            ("Agent screen (A)", AgentScreen.BINDINGS),
            ("Command palette", [Binding("ctrl+p", "", "Every command by name: methods, patterns, allocators, themes")]),
        ]
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(sections))

    def action_plots(self) -> None:
        if self._has_model() and self.controller.state is not None:
            linear = self.selected_linear or self.controller.default_linear()
            self.push_screen(PlotsScreen(self.controller, self.engine, linear))

    # ----- command palette ----------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for command in COMMANDS:
            if command.palette:
                yield SystemCommand(command.palette, command.about, getattr(self, f"action_{command.action}"))
        for picker in self.pickers.values():
            if picker.needs_model and not self.controller.loaded:
                continue
            for value, about in picker.options():
                yield SystemCommand(f"{picker.name}: {value}", about or f"Switch to {value}",
                                    partial(picker.choose, value), discover=False)


def run_app(model: str = "embedded", session: str | None = None, theme: str | None = None, device: str = "auto",
            dtype: str = "auto") -> NoReturn:
    """Run the app in this terminal, then end the process (status 129 after SIGHUP)."""
    specs, _ = load_themes()
    names = [s.name for s in specs]
    if theme is not None and theme not in names:
        raise WorkbenchError("--theme", f"unknown theme {theme!r} (known: {', '.join(names)})")
    app = WorkbenchApp(model=model or "embedded", session=session, theme=theme, device=device, dtype=dtype)
    run_in_terminal(app)


def run_in_terminal(app: WorkbenchApp) -> NoReturn:
    """Run `app` until it closes, then end the process. The app runs on its own event loop because
    `asyncio.run` (what `App.run` uses by default) joins the worker threads on the way out: a quit
    during a model load would wait for the load to finish."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app.run(loop=loop)
    end_process(app)


def end_process(app: WorkbenchApp) -> NoReturn:
    """After the app has closed: say where unsaved edits are, then end the process at once. Textual's
    input thread can outlive a terminal that hung up (quit during a model load, then SIGHUP, left it
    spinning forever); every file the app writes is replaced atomically, so nothing is lost by not
    waiting for other threads."""
    try:  # after a hangup the terminal is gone and writing to it fails
        if app.controller.dirty and app.recovery is not None and app.recovery_path.exists():
            print(f"workbench: unsaved edits are kept in {app.recovery_path}; the next start offers to restore them",
                  file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(app.return_code or 0)


if __name__ == "__main__":
    sys.exit(run_app(*sys.argv[1:2]))
