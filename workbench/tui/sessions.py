"""Session files and the recovery file: loading the model (fresh, from a session file, or from this
instance's recovery file after asking), save, save as and open, the autosave of every edit, and giving the
recovery slot up when the app closes (a recovery file with unsaved edits stays for the next start)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from textual.app import App

from workbench.app.recovery import (Autosave, claim_recovery, clear_recovery, default_recovery_path, describe_recovery,
                                    release_recovery)
from workbench.infra.errors import WorkbenchError
from workbench.jobs.results import AutosaveFailed, Loaded, Saved
from workbench.tui.screens.confirm import ConfirmScreen
from workbench.tui.screens.path_prompt import PathPrompt
from workbench.tui.widgets.block_pane import BlockPane


class Sessions:
    """See the module docstring; one per app. `session`: the file to open at start (else a fresh start,
    or the recovery file when the user restores it)."""

    def __init__(self, app: App, session: Path | None, recovery_path: Path | None):
        self.app = app
        self.session_arg = session
        self.recovery_path = recovery_path or default_recovery_path()
        self.recovery = None  # this instance's claim on its recovery slot
        self.autosave: Autosave | None = None
        self.loading_path: Path | None = None

    @property
    def results(self) -> dict[type, Callable]:
        return {Loaded: self.loaded, Saved: self.saved, AutosaveFailed: self.autosave_failed}

    # ----- start and end ------------------------------------------------------------------------------
    def start(self) -> None:
        """Claim a recovery slot, then load the session asked for, or offer to restore unsaved edits."""
        app = self.app
        try:
            self.recovery = claim_recovery(self.recovery_path, adopt=self.session_arg is None)
            self.recovery_path = self.recovery.path
            self.autosave = Autosave(self.recovery_path)
        except WorkbenchError as error:
            app.notify(f"{error}; edits are not autosaved", severity="warning", timeout=10)
        if self.session_arg is not None:
            self.start_loading(path=self.session_arg)
            return
        recovered = describe_recovery(self.recovery_path) if self.recovery is not None else None
        if recovered is None:
            self.start_loading()
            return

        def answer(restore: bool | None) -> None:
            if restore:
                self.start_loading(path=self.recovery_path)
            else:
                clear_recovery(self.recovery_path)
                self.start_loading()

        app.push_screen(ConfirmScreen(f"A session was {recovered} and never saved ({self.recovery_path}). "
                                      "Restore it?", "Restore (y)", "Start fresh (n)"), answer)

    def release(self) -> None:
        """Give this instance's recovery slot up."""
        if self.recovery is not None:
            release_recovery(self.recovery)

    def quitting(self) -> None:
        """Nothing unsaved: the recovery file goes."""
        if not self.app.controller.dirty:
            self.clear_recovery()

    # ----- loading ------------------------------------------------------------------------------------
    def start_loading(self, path: Path | None = None) -> None:
        app = self.app
        self.loading_path = path
        app.show_activity(f"reading {path}" if path else f"loading {app.model_spec}", None)
        app.jobs.submit("load", factory=app.engine_factory, model=app.model_spec, path=path, device=app.device,
                        dtype=app.dtype, calibration=app.calibration)

    def load_failed(self) -> None:
        """A load failed with no model yet: a session file that failed falls back to a fresh start."""
        if self.loading_path is not None:
            self.start_loading()
        else:
            self.app.blocks.show_no_model()

    def loaded(self, message: Loaded) -> None:
        app = self.app
        new_engine = message.engine is not app.engine
        app.jobs.adopt(message.engine)
        session = message.session
        if session is not None:
            restored = Path(message.path) == self.recovery_path
            calibrate = app.controller.open(session, Path(message.path), restored, app.engine.plan)
            app.device, app.dtype = session.device, session.dtype
            if session.theme in app.available_themes:
                app.theme = session.theme
            app.notify(f"{'restored' if restored else 'opened'} {message.path}")
        else:
            calibrate = app.controller.start(app.engine.plan)
        if new_engine or len(app.blocks.query(BlockPane)) != message.blocks:
            app.blocks.build_panes(message.blocks, app.controller.plan.sparsity)
            app.controller.state = None
        app.features["sensitivity"].show_heat()
        app.refresh_header()
        app.pruning.run_prune(calibrate)
        if session is not None and session.sections.get("heal") is not None:
            app.features["heal"].reopen(session.sections["heal"], Path(message.path))

    # ----- save and open ------------------------------------------------------------------------------
    def save(self) -> None:
        if not self.app.has_model():
            return
        path = self.app.controller.session_path
        if path is None:
            self.save_as()
        else:
            self.app.pruning.when_applied(partial(self._start_save, path))

    def save_as(self) -> None:
        app = self.app
        if not app.has_model():
            return

        def chosen(path: Path | None) -> None:
            if path is not None:
                app.pruning.when_applied(partial(self._start_save, path))

        current = app.controller.session_path
        app.push_screen(PathPrompt("Save the session as (TOML)", str(current) if current else "session.toml"), chosen)

    def _start_save(self, path: Path) -> None:
        app, controller = self.app, self.app.controller
        app.jobs.submit("save", path=path, history=controller.history.to_records(), probes=controller.current_probes,
                        theme=app.theme, device=app.device, dtype=app.dtype, sections=controller.sections())

    def saved(self, message: Saved) -> None:
        self.app.controller.saved(message.path)
        self.clear_recovery()
        self.app.notify(f"saved {message.path}")
        self.app.refresh_header()

    def open(self) -> None:
        app = self.app

        def chosen(path: Path | None) -> None:
            if path is not None:
                app.jobs.cancel()
                self.start_loading(path=path)

        current = app.controller.session_path
        app.push_screen(PathPrompt("Open a session file", str(current or ""), must_exist=True), chosen)

    # ----- the recovery file --------------------------------------------------------------------------
    def save_recovery(self) -> None:
        """Rewrite the recovery file with the current plan, history and probes (in a worker)."""
        if self.autosave is not None:
            app = self.app
            session = app.controller.recovery_session(app.engine, app.device, app.dtype, app.theme)
            app.jobs.submit("autosave", autosave=self.autosave, session=session, ticket=self.autosave.ticket())

    def autosave_failed(self, message: AutosaveFailed) -> None:
        """A failed write is one warning until a write succeeds again."""
        self.app.notify(f"autosave failed: {message.error}; edits are kept in memory until saved",
                        severity="warning", timeout=10)

    def clear_recovery(self) -> None:
        """Remove this instance's recovery file (never another's) and drop any autosave still queued."""
        if self.autosave is not None:
            self.autosave.clear()
