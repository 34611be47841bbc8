"""A modal form: the parameters of the plan's allocator, the Agent screen's settings; one input per field,
each with its hint."""

from __future__ import annotations

from typing import Any, Callable

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label

from workbench.tui.screens.dialog import Dialog

Field = tuple[str, str, str]  # key, text, hint


class ParamsScreen(Dialog[Any]):
    """One input per field (key, text, hint) under `title`; enter hands the typed texts to `parse`, whose
    ValueError (naming the field) is shown; escape cancels. `note` is one more line under the fields.
    Dismisses with what `parse` returned, or None."""

    DEFAULT_CSS = """
    ParamsScreen > Vertical { width: 76; max-height: 100%; overflow-y: auto; }
    ParamsScreen Horizontal { height: 1; }
    ParamsScreen Horizontal > Label { width: 10; }
    ParamsScreen Input { width: 1fr; height: 1; border: none; padding: 0 1; background: $boost; }
    ParamsScreen Input:focus { border: none; background: $primary 30%; }
    ParamsScreen .hint { width: 1fr; color: $foreground 60%; }
    """

    def __init__(self, title: str, fields: list[Field], parse: Callable[[dict[str, str]], Any], note: str = ""):
        super().__init__()
        self.title_text = title
        self.fields = fields
        self.parse = parse
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text)
            for key, text, hint in self.fields:
                with Horizontal():
                    yield Label(key)
                    yield Input(value=text, id=f"param-{key}")
                if hint:
                    yield Label(hint, classes="hint")
            if self.note:
                yield Label(self.note, classes="hint")
            yield Label("enter: apply   escape: cancel", classes="hint")
            yield Label("", classes="error", id="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        typed = {key: self.query_one(f"#param-{key}", Input).value for key, _, _ in self.fields}
        try:
            value = self.parse(typed)
        except ValueError as exc:
            self.show_error(str(exc))
            return
        self.dismiss(value)
