"""The workbench app: per-block panes with live statistics and sparsity sliders over the engine.

Every number on screen comes from the engine (`workbench.engine`); the app only turns key presses into
plans. Heavy work runs in thread workers (one group per kind: engine, prune, probe, save, histogram) that
never touch widgets: they post messages, and errors end up in `on_worker_state_changed` as notifications.
A worker holds `_engine_lock` while it uses the engine, so a cancelled worker finishes its current linear
before the next one starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, NoReturn

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.theme import Theme
from textual.timer import Timer
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState, get_current_worker

from workbench.errors import Cancelled, WorkbenchError
from workbench.tui import edits
from workbench.tui.activity import Activity
from workbench.tui.block_pane import BlockPane
from workbench.tui.confirm_screen import ConfirmScreen
from workbench.tui.format import Cell, Scale, cells_markup, params, pct
from workbench.tui.header import WorkbenchHeader
from workbench.tui.headings_row import HeadingsRow
from workbench.tui.help_screen import HelpScreen
from workbench.tui.history import EditHistory
from workbench.tui.messages import EngineReady, HistogramReady, ProbesDone, Saved, StateChanged, WorkProgress
from workbench.tui.params_screen import ParamsScreen
from workbench.tui.path_prompt import PathPrompt
from workbench.tui.picker_screen import PickerScreen
from workbench.tui.plots_screen import PlotsScreen
from workbench.tui.recovery import (claim_recovery, clear_recovery, default_recovery_path, describe_recovery,
                                     release_recovery, write_recovery)
from workbench.tui.slider import Slider
from workbench.tui.stat_row import StatRow
from workbench.tui.themes import ThemeSpec, default_theme_name, load_themes

DEBOUNCE_S = 0.3
REFRESH_S = 0.25
EDITING_ACTIONS = {"save_as", "open", "prune", "pick_method", "pick_pattern", "pick_allocator", "allocator_params",
                   "focus_global", "plots", "change_theme"}
PRUNING = ("prune", "calibrate")
CANCELLABLE = ("prune", "calibrate", "probe")
ENGINE_GROUPS = ("engine", "prune", "calibrate", "probe", "save")
PATTERNS = [("unstructured", "any weight may go; sliders set each block and linear"),
            ("2:4", "2 of every 4 consecutive inputs are zero (50%, fixed)"),
            ("4:8", "4 of every 8 consecutive inputs are zero (50%, fixed)")]

EngineFactory = Callable[..., object]


def load_engine(model: str, device: str, dtype: str, calibration, progress):
    """The default engine factory: `Engine.load`."""
    from workbench.engine import Engine

    return Engine.load(model, device=device, dtype=dtype, calibration=calibration, progress=progress)


def textual_theme(spec: ThemeSpec) -> Theme:
    """A Textual theme from a parsed theme file."""
    return Theme(name=spec.name, dark=spec.dark, variables=dict(spec.variables), **spec.colors)


class WorkbenchApp(App):
    """Hand-tune per-block sparsity: sliders, live statistics, background re-pruning, probes, sessions."""

    CSS_PATH = "app.tcss"
    TITLE = "workbench"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]

    BINDINGS = [
        Binding("question_mark,f1", "help", "Help", id="app.help"),
        Binding("ctrl+s", "save", "Save", id="app.save", tooltip="Save the session (TOML)"),
        Binding("S", "save_as", "Save as", id="app.save_as", show=False),
        Binding("ctrl+o", "open", "Open", id="app.open", show=False),
        Binding("t", "probe", "Probe", id="app.probe", tooltip="Run the quick probes (esc cancels)"),
        Binding("p", "prune", "Prune", id="app.prune", tooltip="Full calibration-aware prune of the current plan"),
        Binding("escape", "cancel", "Cancel work", id="app.cancel", show=False),
        Binding("ctrl+z,u", "undo", "Undo", id="app.undo", show=False),
        Binding("ctrl+y,U", "redo", "Redo", id="app.redo", show=False),
        Binding("m", "pick_method", "Method", id="app.method", tooltip="Pick the pruning method"),
        Binding("n", "pick_pattern", "N:M pattern", id="app.pattern", show=False),
        Binding("a", "pick_allocator", "Alloc", id="app.allocator", tooltip="Pick the allocator (resets sliders)"),
        Binding("o", "allocator_params", "Allocator parameters (OWL M, lambda)", id="app.allocator_params", show=False),
        Binding("g", "focus_global", "Global target", id="app.global", show=False),
        Binding("v", "plots", "Plots", id="app.plots", tooltip="Plots: allocation, |W| histogram, probe history"),
        Binding("T", "change_theme", "Theme", id="app.theme", show=False),
        Binding("q", "quit", "Quit", id="app.quit", tooltip="Quit (also ctrl+q); unsaved edits stay in the recovery file"),
    ]

    def __init__(self, model: str = "embedded", session: str | Path | None = None, theme: str | None = None,
                 device: str = "auto", dtype: str = "auto", *, engine_factory: EngineFactory | None = None,
                 calibration=None, probe_names: Iterable[str] | None = None, recovery_path: Path | None = None,
                 themes_directory: Path | None = None):
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
        specs, self._theme_errors = load_themes(themes_directory)
        self.theme_names = [s.name for s in specs]
        for spec in specs:
            self.register_theme(textual_theme(spec))
        wanted = theme or default_theme_name()
        if wanted not in self.available_themes:
            self._theme_errors.append(f"theme {wanted!r} not found; using {self.theme_names[0] if self.theme_names else 'textual-dark'}")
            wanted = self.theme_names[0] if self.theme_names else "textual-dark"
        self.theme = wanted

        self.engine = None
        self.state = None
        self.plan = None
        self.targets: dict[str, float] = {}
        self.applied_plan = None
        self.history: EditHistory | None = None
        self.probes: list = []
        self.probes_plan = None
        self.dense_probes: dict = {}
        self.session_path: Path | None = None
        self.dirty = False
        self.selected_linear: str | None = None
        self._engine_lock = threading.Lock()
        self._recovery_lock = threading.Lock()
        self._recovery_seq = 0
        self._autosave_failing = False
        self._debounce: Timer | None = None
        self._after_prune: list[Callable[[], None]] = []
        self._user_cancelled = False
        self._loading_path: Path | None = None

    # ----- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield WorkbenchHeader()
        yield Activity()
        yield HeadingsRow()
        yield StatRow(("global",), "all", "global target", 0.5, classes="global-row")
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
        """Over a dialog only quit and help work; on the plots screen also save, probes, undo/redo and
        cancel (the other app keys are disabled and hidden there)."""
        if isinstance(self.screen, ModalScreen) and action not in ("quit", "help") and \
                action in {b.action for b in self.BINDINGS}:
            return False
        if isinstance(self.screen, PlotsScreen) and action in EDITING_ACTIONS:
            return False
        return True

    # ----- background work ----------------------------------------------------------------------------
    def _busy(self, groups: Iterable[str] = ENGINE_GROUPS) -> bool:
        return any(w.group in groups and w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in self.workers)

    def _poster(self, kind: str, worker: Worker) -> Callable[[str, float], None]:
        def progress(message: str, fraction: float | None) -> None:
            if not worker.is_cancelled:
                self.post_message(WorkProgress(kind, message, fraction))

        return progress

    def _start_loading(self, path: Path | None = None) -> None:
        self._loading_path = path
        self.query_one(Activity).show(f"reading {path}" if path else f"loading {self.model_spec}", None)
        self._load_worker(self.model_spec, path)

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def _load_worker(self, model: str, path: Path | None) -> None:
        """Load a model (or reuse the loaded one) and, for a session, read and check the file."""
        from workbench.engine import CalibrationSpec
        from workbench.session import check_against_model, load_session

        worker = get_current_worker()
        progress = self._poster("engine", worker)
        session = load_session(path) if path is not None else None
        if session is not None:
            model, device, dtype, calibration = session.model, session.device, session.dtype, session.calibration
        else:
            device, dtype, calibration = self.device, self.dtype, self.calibration or CalibrationSpec()
        with self._engine_lock:
            engine = self.engine
            if engine is None or engine.loaded.spec != model or engine.calibration != calibration:
                progress(f"loading {model}", None)
                engine = self.engine_factory(model=model, device=device, dtype=dtype, calibration=calibration,
                                             progress=progress)
            if session is not None:
                check_against_model(session, engine, path)
        if not worker.is_cancelled:
            self.post_message(EngineReady(engine, len(engine.linears), session, path))

    def on_engine_ready(self, message: EngineReady) -> None:
        from workbench.engine import Plan

        new_engine = message.engine is not self.engine
        self.engine = message.engine
        session = message.session
        self.applied_plan = self.engine.plan
        if session is not None:
            plan, calibrate = session.plan, session.calibrated_with or session.plan
            self.history = EditHistory.from_records(session.history, plan)
            self.probes, self.probes_plan = list(session.probes), plan
            self.dense_probes = {p.name: p for p in session.dense_probes}
            self.device, self.dtype = session.device, session.dtype
            if session.theme in self.available_themes:
                self.theme = session.theme
            from_recovery = Path(message.path) == self.recovery_path
            self.session_path = None if from_recovery else Path(message.path)
            self.dirty = from_recovery
            self.notify(f"{'restored' if from_recovery else 'opened'} {message.path}")
        else:
            plan = self.engine.plan or Plan()
            calibrate = None if self.engine.plan is not None else plan
            self.history = EditHistory(plan)
            self.probes, self.probes_plan, self.dense_probes = [], None, {}
        self.plan = plan
        if new_engine or len(self.query(BlockPane)) != message.blocks:
            self._build_panes(message.blocks, plan.sparsity)
            self.state = None
        self._refresh_header()
        self._run_prune(plan, calibrate)

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

    def _run_prune(self, plan, calibrate=None) -> None:
        """Re-prune in the background: incremental from cached statistics (`calibrate` None; a newer edit
        cancels it), or the full calibration-aware prune of `calibrate` and then `plan`. Edits made while a
        full prune runs are applied incrementally when it is done."""
        if self._debounce is not None:
            self._debounce.stop()
            self._debounce = None
        self._user_cancelled = False
        if calibrate is None and self.engine.needs_full_prune(plan):  # a full prune, which edits do not cancel
            calibrate = plan
        if calibrate is not None:
            self.workers.cancel_group(self, "prune")
            self.query_one(Activity).show("calibrating", 0.0, cancellable=True)
            self._full_prune_worker(plan, calibrate)
        elif not self._busy(("calibrate",)):
            self._start_incremental(plan)

    def _start_incremental(self, plan) -> None:
        self.query_one(Activity).show("re-pruning", 0.0, cancellable=True)
        self._prune_worker(plan)

    @work(thread=True, exclusive=True, group="calibrate", exit_on_error=False)
    def _full_prune_worker(self, plan, calibrate) -> None:
        self._prune_in_worker(plan, calibrate)

    @work(thread=True, exclusive=True, group="prune", exit_on_error=False)
    def _prune_worker(self, plan) -> None:
        self._prune_in_worker(plan, None)

    def _prune_in_worker(self, plan, calibrate) -> None:
        """The body of both prune workers (runs in the worker's thread)."""
        worker = get_current_worker()
        cancel = lambda: worker.is_cancelled  # noqa: E731
        post = self._poster(worker.group, worker)
        with self._engine_lock:
            if worker.is_cancelled:
                return
            engine = self.engine
            if plan.allocator != "uniform" and not plan.pattern:
                post(f"{plan.allocator}: statistics of the dense model", 0.0)
                engine.calibrate(progress=post, cancel=cancel)  # cached after the first time
            targets = engine.allocate(plan)
            self.post_message(StateChanged(engine.state(), plan, targets, final=False, full=False))
            last = time.monotonic()

            def progress(message: str, fraction: float) -> None:
                nonlocal last
                post(message, fraction)
                if not worker.is_cancelled and time.monotonic() - last >= REFRESH_S:
                    last = time.monotonic()
                    self.post_message(StateChanged(engine.state(), plan, targets, final=False, full=False))

            if calibrate is not None:
                engine.prune(calibrate, progress, cancel)
            engine.apply(plan, progress, cancel)
            state = engine.state()
        if not worker.is_cancelled:
            self.post_message(StateChanged(state, plan, targets, final=True, full=calibrate is not None))

    def on_state_changed(self, message: StateChanged) -> None:
        if self.engine is None:
            return
        current = message.plan == self.plan
        self.state = message.state
        if message.final:
            self.applied_plan = message.plan
        if current:
            self.targets = message.targets
        self._show_state(move_sliders=current)
        if message.final and current:
            actions, self._after_prune = self._after_prune, []
            for action in actions:
                action()
        elif message.final and message.full:
            self._start_incremental(self.plan)
        if isinstance(self.screen, PlotsScreen):
            self._draw_allocation(self.screen)
            if message.final:
                self._request_histogram()

    def _show_state(self, move_sliders: bool) -> None:
        state, plan = self.state, self.plan
        locked = bool(plan.pattern)
        targets = self.targets if move_sliders and self.targets else None
        scale = Scale.of(state.blocks)
        for pane, block in zip(self.query(BlockPane), state.blocks):
            overridden = {x.name for x in block.linears if x.name in plan.linear_overrides}
            if block.index in plan.block_overrides:
                overridden.add("block")
            pane.show(block, scale, targets, overridden, locked)
        row = self.query_one(".global-row", StatRow)
        row.show_target(plan.sparsity, False, locked)
        row.query_one(".stats", Static).update(cells_markup([
            Cell(f"{pct(state.achieved):>6}"),
            Cell(f"{params(state.params_nonzero)} of {params(state.params_total)} left"),
        ]))
        self._refresh_header()

    def _refresh_header(self) -> None:
        if self.plan is None or self.engine is None:
            return
        from workbench.allocators import ALLOCATORS

        note = None
        if self.applied_plan != self.plan:
            running = self._debounce is not None or self._busy(PRUNING) or bool(self._after_prune)
            note = "re-pruning" if running else "not applied (p prunes)"
        self.query_one(WorkbenchHeader).show(
            self.engine.loaded.spec, self.plan, ALLOCATORS.get(self.plan.allocator).defaults, self.state, note,
            self.session_path.name if self.session_path else None, self.dirty,
            self.probes, self.dense_probes, self.probes_plan != self.plan,
        )

    def on_work_progress(self, message: WorkProgress) -> None:
        if self._busy((message.kind,)):
            self.query_one(Activity).show(message.message, message.fraction, message.kind in CANCELLABLE)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker outcomes land: errors become notifications, never a crash. The event's own
        state counts: a worker that fails at once is already in ERROR when its PENDING event arrives."""
        worker = event.worker
        if event.state == WorkerState.ERROR:
            error = worker.error
            if isinstance(error, Cancelled):
                pass
            elif isinstance(error, WorkbenchError):
                self.notify(str(error), title=f"{worker.group} failed", severity="error", timeout=10)
            elif isinstance(error, MemoryError) or "out of memory" in str(error).lower():
                self.notify("out of memory: try a smaller model, fewer calibration samples or another device",
                            title=f"{worker.group} failed", severity="error", timeout=10)
            else:
                self.notify(f"{type(error).__name__}: {error}", title=f"{worker.group} failed", severity="error",
                            timeout=10)
            if worker.group in PRUNING:
                self._after_prune.clear()
            if worker.group == "engine" and self.engine is None:
                if self._loading_path is not None:
                    self._start_loading()
                    return
                self.query_one(WorkbenchHeader).show_message("no model loaded: ctrl+o opens a session, q quits")
                self.query_one("#blocks .placeholder", Static).update(
                    "No model loaded. ctrl+o opens a session file; q quits.")
        if event.state == WorkerState.CANCELLED and worker.group in CANCELLABLE and self._user_cancelled:
            self.notify(f"{'probes' if worker.group == 'probe' else 'pruning'} cancelled")
        if worker.state in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED) and not self._busy():
            self.query_one(Activity).hide()
            self._refresh_header()

    # ----- edits ------------------------------------------------------------------------------------
    def _has_model(self) -> bool:
        if self.engine is None or self.plan is None:
            self.notify("the model is still loading", severity="warning")
            return False
        return True

    def _edit(self, plan, label: str, source=None) -> None:
        """Record an edit and re-prune after a short pause (a newer edit restarts the pause). Quick
        repeated edits from one `source` are one step in the history."""
        if plan == self.plan:
            return
        self.history.push(label, plan, source, time.monotonic())
        self._set_plan(plan)

    def _set_plan(self, plan) -> None:
        self.plan = plan
        self.dirty = True
        self.workers.cancel_group(self, "probe")
        if self._debounce is not None:
            self._debounce.stop()
        self._debounce = self.set_timer(DEBOUNCE_S, lambda: self._run_prune(self.plan))
        self._autosave()
        self._refresh_header()

    def on_slider_changed(self, event: Slider.Changed) -> None:
        if not self._has_model():
            return
        key = event.slider.key
        kind, *rest = key
        if kind == "global":
            self._edit(*edits.set_global(self.plan, event.value), source=key)
        elif kind == "block":
            self._edit(*edits.set_block(self.plan, rest[0], event.value), source=key)
        else:
            self._edit(*edits.set_linear(self.plan, rest[0], event.value), source=key)

    def on_slider_reset(self, event: Slider.Reset) -> None:
        if not self._has_model():
            return
        kind, *rest = event.slider.key
        if kind == "block":
            self._edit(*edits.reset_block(self.plan, rest[0]))
        elif kind == "linear":
            self._edit(*edits.reset_linear(self.plan, rest[0]))

    def on_slider_refused(self, event: Slider.Refused) -> None:
        if self.plan is not None and self.plan.pattern:
            self.notify(f"pattern {self.plan.pattern} fixes every linear; press n for unstructured to edit targets",
                        severity="warning")
        else:
            self.notify("the model is still loading", severity="warning")

    def on_descendant_focus(self, event) -> None:
        slider = event.widget
        if not isinstance(slider, Slider) or self.state is None:
            return
        kind, *rest = slider.key
        if kind == "linear":
            self.selected_linear = rest[0]
        elif kind == "block":
            self.selected_linear = self.state.blocks[rest[0]].linears[-1].name

    def action_undo(self) -> None:
        if self._has_model():
            undone = self.history.current.label
            edit = self.history.undo()
            if edit is None:
                self.notify("nothing to undo")
                return
            self._set_plan(edit.plan)
            self.notify(f"undid {undone}")

    def action_redo(self) -> None:
        if self._has_model():
            edit = self.history.redo()
            if edit is None:
                self.notify("nothing to redo")
                return
            self._set_plan(edit.plan)
            self.notify(f"redid {edit.label}")

    def action_focus_global(self) -> None:
        self.screen.set_focus(self.query_one(".global-row", StatRow).slider)

    def action_cancel(self) -> None:
        """Cancel re-pruning and probes; every linear is left fully old or fully new."""
        if not self._busy(CANCELLABLE) and self._debounce is None:
            return
        if self._debounce is not None:
            self._debounce.stop()
            self._debounce = None
        self._user_cancelled = True
        self._after_prune.clear()
        for group in CANCELLABLE:
            self.workers.cancel_group(self, group)
        self._refresh_after_cancel()

    @work(thread=True, exclusive=True, group="refresh", exit_on_error=False)
    def _refresh_after_cancel(self) -> None:
        """Show what the engine holds once the cancelled worker has let go of it."""
        with self._engine_lock:
            engine = self.engine
            plan, state = engine.plan, engine.state()
            targets = engine.allocate(plan) if plan is not None else {}
        self.post_message(StateChanged(state, plan, targets, final=True, full=False))

    # ----- pickers ----------------------------------------------------------------------------------
    def action_pick_method(self) -> None:
        if not self._has_model():
            return
        from workbench.methods import METHODS

        choices = [(name, METHODS.get(name).description) for name in METHODS.names()]
        self.push_screen(PickerScreen("Pruning method", choices, self.plan.method), self._choose_method)

    def _choose_method(self, method: str | None) -> None:
        if method is not None and method != self.plan.method:
            self._edit(*edits.choose_method(self.plan, method))

    def action_pick_pattern(self) -> None:
        if self._has_model():
            self.push_screen(PickerScreen("Sparsity pattern", PATTERNS, self.plan.pattern or "unstructured"),
                             self._choose_pattern)

    def _choose_pattern(self, pattern: str | None) -> None:
        if pattern is not None and (pattern if pattern != "unstructured" else None) != self.plan.pattern:
            self._edit(*edits.choose_pattern(self.plan, None if pattern == "unstructured" else pattern))

    def action_pick_allocator(self) -> None:
        if not self._has_model():
            return
        from workbench.allocators import ALLOCATORS

        choices = [(name, ALLOCATORS.get(name).description) for name in ALLOCATORS.names()]
        self.push_screen(PickerScreen("Allocator (resets the sliders to its allocation)", choices,
                                      self.plan.allocator), self._choose_allocator)

    def _choose_allocator(self, allocator: str | None) -> None:
        if allocator is not None:
            self._edit(*edits.choose_allocator(self.plan, allocator))

    def action_allocator_params(self) -> None:
        if not self._has_model():
            return
        from workbench.allocators import ALLOCATORS

        defaults = ALLOCATORS.get(self.plan.allocator).defaults
        if not defaults:
            self.notify(f"{self.plan.allocator} has no parameters; a picks another allocator (owl has M and lambda)")
            return
        current = {**defaults, **self.plan.allocator_params}
        self.push_screen(ParamsScreen(f"{self.plan.allocator} parameters", current), self._set_allocator_params)

    def _set_allocator_params(self, values: dict | None) -> None:
        if values is not None:
            self._edit(*edits.set_allocator_params(self.plan, values))

    def action_change_theme(self) -> None:
        choices = [(name, "") for name in self.theme_names]
        self.push_screen(PickerScreen("Theme", choices, self.theme), self._choose_theme)

    def _choose_theme(self, name: str | None) -> None:
        if name is not None:
            self.theme = name
            if self.plan is not None:
                self._autosave()

    # ----- full prune and probes ----------------------------------------------------------------------
    def action_prune(self) -> None:
        """Re-run the full calibration-aware prune of the current plan (fresh statistics)."""
        if self._has_model():
            self.workers.cancel_group(self, "probe")
            self._run_prune(self.plan, calibrate=self.plan)

    def _when_applied(self, action: Callable[[], None]) -> None:
        """Run `action` now if the current plan is applied and nothing re-prunes, else once it is."""
        if self._debounce is not None:
            self._run_prune(self.plan)
        if self._busy(PRUNING) or self.applied_plan != self.plan:
            self._after_prune.append(action)
            if not self._busy(PRUNING):
                self._run_prune(self.plan)
        else:
            action()

    def action_probe(self) -> None:
        """Run the quick probes on the current plan (cancel with escape)."""
        if self._has_model():
            self._when_applied(self._start_probes)

    def _start_probes(self) -> None:
        from workbench.probes import PROBES

        names = self.probe_names if self.probe_names is not None else tuple(PROBES.names())
        self._user_cancelled = False
        self.query_one(Activity).show(f"{len(names)} probes", None, cancellable=True)
        self._probe_worker(names)

    @work(thread=True, exclusive=True, group="probe", exit_on_error=False)
    def _probe_worker(self, names: tuple[str, ...]) -> None:
        worker = get_current_worker()
        post = self._poster("probe", worker)
        with self._engine_lock:
            if worker.is_cancelled:
                return
            engine = self.engine
            missing = [n for n in names if n not in engine.dense_probes]
            if missing:
                post(f"measuring the dense model ({len(missing)} probes)", None)
            results = engine.probe(names, "quick", progress=lambda name, f: post(f"probe {name}", f),
                                   cancel=lambda: worker.is_cancelled)
            dense, plan = dict(engine.dense_probes), engine.plan
        if not worker.is_cancelled:
            self.post_message(ProbesDone(results, dense, plan))

    def on_probes_done(self, message: ProbesDone) -> None:
        self.probes, self.dense_probes, self.probes_plan = message.results, message.dense, message.plan
        if message.plan == self.plan:
            self.history.record_probes({r.name: r.score for r in message.results})
        self.dirty = True
        self._autosave()
        self._refresh_header()
        if isinstance(self.screen, PlotsScreen):
            self._draw_probes(self.screen)

    # ----- sessions -----------------------------------------------------------------------------------
    def action_save(self) -> None:
        if not self._has_model():
            return
        if self.session_path is None:
            self.action_save_as()
        else:
            self._when_applied(partial(self._start_save, self.session_path))

    def action_save_as(self) -> None:
        if not self._has_model():
            return

        def chosen(path: Path | None) -> None:
            if path is not None:
                self._when_applied(partial(self._start_save, path))

        default = str(self.session_path) if self.session_path else "session.toml"
        self.push_screen(PathPrompt("Save the session as (TOML)", default), chosen)

    def _start_save(self, path: Path) -> None:
        probes = self.probes if self.probes_plan == self.plan else []
        self._save_worker(path, self.history.to_records(), probes, self.theme)

    @work(thread=True, exclusive=True, group="save", exit_on_error=False)
    def _save_worker(self, path: Path, history: list[dict], probes: list, theme: str) -> None:
        from workbench.session import save_session, session_from_engine

        with self._engine_lock:
            session = session_from_engine(self.engine, history=history, probes=probes, theme=theme,
                                          device=self.device, dtype=self.dtype)
        save_session(session, path)
        self.post_message(Saved(path))

    def on_saved(self, message: Saved) -> None:
        self.session_path = Path(message.path)
        self.dirty = False
        self._clear_recovery()
        self.notify(f"saved {message.path}")
        self._refresh_header()

    def action_open(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is not None:
                for group in CANCELLABLE:
                    self.workers.cancel_group(self, group)
                self._start_loading(path=path)

        self.push_screen(PathPrompt("Open a session file", str(self.session_path or ""), must_exist=True), chosen)

    def _autosave(self) -> None:
        """Rewrite the recovery file with the current plan, history and probes (in a worker)."""
        from workbench.session import Session, current_versions

        if self.recovery is None:
            return
        engine = self.engine
        session = Session(
            model=engine.loaded.spec, device=self.device, dtype=self.dtype, calibration=engine.calibration,
            plan=self.plan, calibrated_with=engine.calibrated_with or self.plan, history=self.history.to_records(),
            probes=list(self.probes) if self.probes_plan == self.plan else [],
            dense_probes=list(self.dense_probes.values()), theme=self.theme, versions=current_versions(),
        )
        self._recovery_seq += 1
        self._write_recovery(session, self._recovery_seq)

    @work(thread=True, group="autosave", exit_on_error=False)
    def _write_recovery(self, session, seq: int) -> None:
        """Write the recovery file; a failure (disk full...) is one warning until a write succeeds again."""
        with self._recovery_lock:
            if seq != self._recovery_seq:
                return
            try:
                write_recovery(session, self.recovery_path)
            except WorkbenchError as error:
                if not self._autosave_failing:
                    self.notify(f"autosave failed: {error}; edits are kept in memory until saved", severity="warning",
                                timeout=10)
                self._autosave_failing = True
                return
            self._autosave_failing = False

    def _clear_recovery(self) -> None:
        """Remove this instance's recovery file (never another's) and drop any autosave still queued."""
        self._recovery_seq += 1
        if self.recovery is not None:
            with self._recovery_lock:
                clear_recovery(self.recovery_path)

    async def action_quit(self) -> None:
        """Leave at once; unsaved edits stay in the recovery file for the next start."""
        if not self.dirty:
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
            ("Command palette", [Binding("ctrl+p", "", "Every command by name: methods, patterns, allocators, themes")]),
        ]
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(sections))

    def action_plots(self) -> None:
        if not self._has_model() or self.state is None:
            return
        screen = PlotsScreen()
        self.push_screen(screen)
        self.call_after_refresh(self._draw_plots, screen)

    def _draw_plots(self, screen: PlotsScreen) -> None:
        self._draw_allocation(screen)
        self._draw_probes(screen)
        self._request_histogram()

    def _draw_allocation(self, screen: PlotsScreen) -> None:
        blocks = self.state.blocks
        targets = [sum(self.targets.get(x.name, x.target) * x.numel for x in b.linears) / b.numel for b in blocks]
        screen.allocation.draw(targets, [b.achieved for b in blocks], [b.outlier_ratio for b in blocks],
                               f"{self.plan.allocator} allocation, target {pct(self.plan.sparsity)}")

    def _draw_probes(self, screen: PlotsScreen) -> None:
        edits_, series = self.history.probe_series()
        screen.probes.draw(edits_, series, self.dense_probes)

    def _request_histogram(self) -> None:
        name = self.selected_linear or self.state.blocks[0].linears[-1].name
        if isinstance(self.screen, PlotsScreen):
            self.screen.histogram.draw_waiting(f"computing the |W| histogram of {name}…")
        self._histogram_worker(name)

    @work(thread=True, exclusive=True, group="histogram", exit_on_error=False)
    def _histogram_worker(self, name: str) -> None:
        with self._engine_lock:  # not while a probe swaps the dense weights in, nor mid-prune
            edges, dense, pruned = self.engine.histogram(name)
        self.post_message(HistogramReady(name, edges, dense, pruned))

    def on_histogram_ready(self, message: HistogramReady) -> None:
        if isinstance(self.screen, PlotsScreen):
            self.screen.histogram.draw(message.name, message.edges, message.dense, message.pruned)

    # ----- command palette ----------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Help", "All key bindings", self.action_help)
        yield SystemCommand("Prune (full)", "Re-run the calibration-aware prune of the current plan", self.action_prune)
        yield SystemCommand("Probes", "Run the quick probes on the current state", self.action_probe)
        yield SystemCommand("Save session", "Write the session file (TOML)", self.action_save)
        yield SystemCommand("Save session as", "Write the session to a new file", self.action_save_as)
        yield SystemCommand("Open session", "Open a session file", self.action_open)
        yield SystemCommand("Undo", "Undo the last edit", self.action_undo)
        yield SystemCommand("Redo", "Redo the edit just undone", self.action_redo)
        yield SystemCommand("Plots", "Allocation, |W| histogram, probe history", self.action_plots)
        yield SystemCommand("Allocator parameters", "OWL M and lambda", self.action_allocator_params)
        for name in self.theme_names:
            yield SystemCommand(f"Theme: {name}", f"Switch to the {name} theme", partial(self._choose_theme, name),
                                discover=False)
        if self.plan is None:
            return
        from workbench.allocators import ALLOCATORS
        from workbench.methods import METHODS

        for name in METHODS.names():
            yield SystemCommand(f"Method: {name}", METHODS.get(name).description, partial(self._choose_method, name),
                                discover=False)
        for name, about in PATTERNS:
            yield SystemCommand(f"Pattern: {name}", about, partial(self._choose_pattern, name), discover=False)
        for name in ALLOCATORS.names():
            yield SystemCommand(f"Allocator: {name}", ALLOCATORS.get(name).description,
                                partial(self._choose_allocator, name), discover=False)


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
        if app.dirty and app.recovery is not None and app.recovery_path.exists():
            print(f"workbench: unsaved edits are kept in {app.recovery_path}; the next start offers to restore them",
                  file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(app.return_code or 0)


if __name__ == "__main__":
    sys.exit(run_app(*sys.argv[1:2]))
