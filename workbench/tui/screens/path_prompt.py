"""A modal that asks for a session file path."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Label

from workbench.tui.screens.dialog import Dialog


class PathPrompt(Dialog[Path | None]):
    """Type a file path (~ is expanded); enter accepts, escape cancels."""

    DEFAULT_CSS = """
    PathPrompt > Vertical { width: 70; }
    PathPrompt Input { width: 100%; }
    """

    def __init__(self, title: str, default: str = "", must_exist: bool = False):
        super().__init__()
        self.title_text = title
        self.default = default
        self.must_exist = must_exist

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text)
            yield Input(value=self.default, placeholder="session.toml", id="path")
            yield Label("", classes="error", id="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            self.show_error("type a file name")
            return
        path = Path(text).expanduser().absolute()
        if self.must_exist and not path.is_file():
            self.show_error(f"no such file: {path}")
            return
        self.dismiss(path)
