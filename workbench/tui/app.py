"""The workbench app: per-block panes with live statistics and sparsity sliders over the engine.

Every number on screen comes from the engine (`workbench.engine.facade`); the app turns key presses into plans
and hands them to its `Controller`, which keeps the plan, its history and what to prune next. Heavy work
runs as jobs of the job layer (`workbench.jobs`: load, prune, probe, save, compare, sensitivity, agent...)
in thread workers; the app only submits them and renders their events (`on_job_event`), and errors become
notifications. A cancelled job finishes its current linear and stops. A comparison, a sensitivity scan
or an agent run holds the engine exclusively (it prunes other plans): the controller holds prunes back
until the engine is given back (an agent run keeps it until the run ends, also while paused), then
re-establishes the current plan. Plots, comparisons, scans and agent runs are features, one folder each
of `workbench.features`, that register their commands, help, screens and job results with the app (the app
finds them there). Session files and the recovery file are `workbench.tui.sessions`; the app
keeps what is app-wide: themes, the command palette, job events and the screens' key rules.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, NoReturn

from textual.app import App, SystemCommand
from textual.screen import ModalScreen, Screen
from textual.theme import Theme
from textual.worker import Worker, WorkerState

from workbench.app.controller import PRUNING, Controller
from workbench.app.themes import ThemeSpec, default_theme_name, load_themes
from workbench.domain.plan import CalibrationSpec
from workbench.infra.errors import WorkbenchError, out_of_memory
from workbench.jobs import events
from workbench.jobs.results import DropsChosen
from workbench.tui.blocks.screen import BlocksScreen
from workbench.tui.bridge import JobBridge, JobEvent
from workbench.tui.commands import command_table
from workbench.tui.feature import features
from workbench.tui.pickers import Pickers
from workbench.tui.pruning import Pruning
from workbench.tui.screens.help import HelpScreen, help_sections
from workbench.tui.sessions import Sessions
from workbench.tui.widgets.activity import Activity

if TYPE_CHECKING:
    from workbench.engine.facade import Engine

FEATURES = features()  # one per folder of workbench.features
COMMANDS = command_table(FEATURES)
APP_ACTIONS = {c.action_name for c in COMMANDS}
EDITING_ACTIONS = {"save_as", "open", "prune", "pick", "allocator_params", "feature"}
OTHER_SCREENS = tuple(screen for feature in FEATURES for screen in feature.screens)  # over the blocks
HANGUP_GRACE_S = 5.0  # after SIGHUP the process ends within this, closed or not
EngineFactory = Callable[..., "Engine"]


def load_engine(model: str, device: str, dtype: str, calibration: CalibrationSpec, progress) -> Engine:
    """The default engine factory: `Engine.load`."""
    from workbench.engine.facade import Engine

    return Engine.load(model, device=device, dtype=dtype, calibration=calibration, progress=progress)


def textual_theme(spec: ThemeSpec) -> Theme:
    """A Textual theme from a parsed theme file."""
    return Theme(name=spec.name, dark=spec.dark, variables=dict(spec.variables), **spec.colors)


class WorkbenchApp(App):
    """Hand-tune per-block sparsity: sliders, live statistics, background re-pruning, probes, sessions."""

    CSS_PATH = "app.tcss"
    TITLE = "workbench"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    BINDINGS = [command.binding() for command in COMMANDS if command.where == "app"]

    def __init__(self, model: str = "embedded", session: str | Path | None = None, theme: str | None = None,
                 device: str = "auto", dtype: str = "auto", *, engine_factory: EngineFactory | None = None,
                 calibration: CalibrationSpec | None = None, probe_names: Iterable[str] | None = None,
                 recovery_path: Path | None = None, themes_directory: Path | None = None):
        super().__init__()
        self.model_spec = model
        self.device = device
        self.dtype = dtype
        self.engine_factory = engine_factory or load_engine
        self.calibration = calibration
        self.probe_names = tuple(probe_names) if probe_names is not None else None
        specs, self._theme_errors = load_themes(themes_directory)
        self.theme_names = [s.name for s in specs]
        for spec in specs:
            self.register_theme(textual_theme(spec))
        wanted = theme or default_theme_name()
        if wanted not in self.available_themes:
            self._theme_errors.append(f"theme {wanted!r} not found; using {self.theme_names[0] if self.theme_names else 'textual-dark'}")
            wanted = self.theme_names[0] if self.theme_names else "textual-dark"
        self.theme = wanted

        self.bridge = JobBridge(self, tuple(kind for feature in FEATURES for kind in feature.jobs))
        self.jobs = self.bridge.jobs
        self.controller = Controller(running=self.jobs.running)
        self.user_cancelled = False
        self.sessions = Sessions(self, Path(session) if session else None, recovery_path)
        self.features = {feature.name: feature(self) for feature in FEATURES}
        self.pickers = Pickers(self)
        self.pruning = Pruning(self)
        self.results: dict[type, Callable] = {  # what the app does with each kind of job state or result
            **self.pruning.results, **self.sessions.results,
            DropsChosen: lambda message: self.blocks.drops_chosen(message),
        }
        for feature in self.features.values():
            self.results.update(feature.results)

    def get_default_screen(self) -> BlocksScreen:
        return BlocksScreen()

    @property
    def blocks(self) -> BlocksScreen:
        """The blocks screen (always at the bottom of the screen stack)."""
        return self.default_screen

    def on_mount(self) -> None:
        self.bridge.bind()
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hang_up)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        for error in self._theme_errors:
            self.notify(error, severity="warning", timeout=8)
        self.sessions.start()

    def on_unmount(self) -> None:
        self.sessions.release()

    @property
    def recovery_path(self) -> Path:
        """This instance's recovery file (`workbench.tui.sessions`)."""
        return self.sessions.recovery_path

    @property
    def recovery(self):
        """This instance's claim on its recovery slot (None when edits are not autosaved)."""
        return self.sessions.recovery

    def save_recovery(self) -> None:
        """Autosave the current plan, history and probes to the recovery file."""
        self.sessions.save_recovery()

    def _hang_up(self) -> None:
        """The terminal went away (SIGHUP): leave now; the recovery file already has every edit. Should the
        app not close within HANGUP_GRACE_S (its shutdown waits on something the lost terminal never
        answers), the process ends anyway: a dropped SSH connection must not leave it running."""
        self.jobs.cancel(everything=True)
        self.workers.cancel_all()
        deadline = threading.Timer(HANGUP_GRACE_S, os._exit, args=(129,))
        deadline.daemon = True
        deadline.start()
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
    def engine(self) -> Engine | None:
        """The engine the jobs run on (None until a model is loaded)."""
        return self.jobs.engine

    @property
    def model_name(self) -> str:
        return self.engine.loaded.spec

    @property
    def hidden(self) -> int:
        """The model's hidden size (GLU widths are shown as expansion ratios of it)."""
        return self.engine.shaper.hidden

    @property
    def running_groups(self) -> frozenset[str]:
        """The job groups with work running or queued (engine, calibrate, prune, probe, save...)."""
        return self.jobs.running_groups

    def show_activity(self, message: str, fraction: float | None, cancellable: bool = False) -> None:
        """Show what runs in the activity line of every screen that has one."""
        for screen in self.screen_stack:
            for activity in screen.query(Activity):
                activity.show(message, fraction, cancellable)

    def on_job_event(self, message: JobEvent) -> None:
        """The one place job events land: progress in the activity line, states and results to their handler
        in `results`, errors as notifications (never a crash), cancels said when the user asked."""
        event = message.event
        job = event.job
        if isinstance(event, events.Progress):
            if not job.cancelled():
                self.show_activity(event.line(), event.fraction, job.kind.cancellable)
        elif isinstance(event, (events.State, events.Result)):
            handler = self.results.get(type(event.value))
            if handler is not None:
                handler(event.value)
        elif isinstance(event, events.Error):
            self._failed(job, event.error)
        elif isinstance(event, events.Cancelled) and job.kind.cancellable and self.user_cancelled:
            self.notify(f"{job.kind.label} cancelled")
        if not isinstance(event, events.ENDINGS):
            return
        for feature in self.features.values():
            feature.ended(job)
        if not self.jobs.running():
            for screen in self.screen_stack:
                for activity in screen.query(Activity):
                    activity.hide()
            self.refresh_header()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A screen's own worker failed (a dialog sequence, a histogram): a notification, never a crash."""
        if event.state == WorkerState.ERROR:
            self.notify(f"{type(event.worker.error).__name__}: {event.worker.error}", severity="error", timeout=10)

    def _failed(self, job, error: BaseException) -> None:
        text = str(error) if isinstance(error, WorkbenchError) else \
            out_of_memory(error) or f"{type(error).__name__}: {error}"
        self.notify(text, title=f"{job.kind.group} failed", severity="error", timeout=10)
        if job.kind.group in PRUNING:
            self.controller.prune_failed()
        if job.kind.name == "load" and self.engine is None:
            self.sessions.load_failed()

    def refresh_header(self) -> None:
        self.blocks.refresh_header()

    # ----- edits ------------------------------------------------------------------------------------
    def has_model(self) -> bool:
        if self.engine is None or not self.controller.loaded:
            self.notify("the model is still loading", severity="warning")
            return False
        return True

    def action_undo(self) -> None:
        if self.has_model():
            self.pruning.undo_or_redo(redo=False)

    def action_redo(self) -> None:
        if self.has_model():
            self.pruning.undo_or_redo(redo=True)

    def start_job(self, name: str, what: str, **args) -> None:
        """Submit a cancellable job of kind `name` (its activity line says `what` until it reports)."""
        self.user_cancelled = False
        self.show_activity(what, None, cancellable=True)
        self.jobs.submit(name, **args)

    def action_feature(self, name: str) -> None:
        """The command of a feature (plots, compare, sensitivity, agent)."""
        self.features[name].start()

    def action_cancel(self) -> None:
        self.pruning.cancel()

    # ----- pickers ----------------------------------------------------------------------------------
    def action_pick(self, kind: str) -> None:
        """Open the picker of `kind` (method, pattern, allocator, width score or divisor, theme)."""
        self.pickers.open(kind)

    def action_allocator_params(self) -> None:
        self.pickers.allocator_params()

    # ----- full prune and probes ----------------------------------------------------------------------
    def action_prune(self) -> None:
        """Re-run the full calibration-aware prune of the current plan (fresh statistics)."""
        if self.has_model():
            self.jobs.cancel("probe")
            self.pruning.run_prune(calibrate=self.controller.plan)

    def action_probe(self) -> None:
        """Run the quick probes on the current plan (cancel with escape)."""
        if self.has_model():
            self.pruning.probe()

    def action_opt_in_probes(self) -> None:
        self.pruning.toggle_opt_in()

    # ----- sessions (`workbench.tui.sessions`) ----------------------------------------------------------
    def action_save(self) -> None:
        self.sessions.save()

    def action_save_as(self) -> None:
        self.sessions.save_as()

    def action_open(self) -> None:
        self.sessions.open()

    async def action_quit(self) -> None:
        """Leave at once; unsaved edits stay in the recovery file for the next start."""
        self.sessions.quitting()
        self.jobs.cancel(everything=True)
        self.workers.cancel_all()
        self.exit()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(help_sections(COMMANDS, self.features.values())))

    # ----- command palette ----------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for command in COMMANDS:
            if command.palette:
                target = self.blocks if command.where == "blocks" else self
                yield SystemCommand(command.palette, command.about, partial(self.call_next, target.run_action,
                                                                            command.action))
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
