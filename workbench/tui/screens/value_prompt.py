"""A small modal that asks for an exact sparsity in percent."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Label

from workbench.app.format import parse_percent
from workbench.tui.screens.dialog import Dialog


class ValuePrompt(Dialog[float | None]):
    """Type a value in percent; enter accepts, escape cancels. Dismisses with a fraction or None."""

    DEFAULT_CSS = """
    ValuePrompt Label { width: 100%; }
    ValuePrompt Input { width: 100%; }
    """

    def __init__(self, what: str, value: float, maximum: float):
        super().__init__()
        self.what = what
        self.value = value
        self.maximum = maximum

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"{self.what}: sparsity in percent (0-{100 * self.maximum:g})")
            yield Input(value=f"{100 * self.value:g}", id="value")
            yield Label("", classes="error", id="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            value = parse_percent(event.value)
            if value > self.maximum + 1e-9:
                raise ValueError(f"must be at most {100 * self.maximum:g} percent")
        except ValueError as exc:
            self.show_error(str(exc))
            return
        self.dismiss(value)
