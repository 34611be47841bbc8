"""A modal that asks for a session file path."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class PathPrompt(ModalScreen[Path | None]):
    """Type a file path (~ is expanded); enter accepts, escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="path.cancel")]

    DEFAULT_CSS = """
    PathPrompt { align: center middle; }
    PathPrompt > Vertical {
        width: 70; max-width: 100%; height: auto; border: round $primary; background: $surface; padding: 0 1;
    }
    PathPrompt Input { width: 100%; }
    PathPrompt .error { color: $error; }
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
            self.query_one("#error", Label).update("type a file name")
            return
        path = Path(text).expanduser().absolute()
        if self.must_exist and not path.is_file():
            self.query_one("#error", Label).update(f"no such file: {path}")
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)
