"""A modal to edit the numeric parameters of the plan's allocator, with the allocator's own hints."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from workbench.allocators import ALLOCATORS
from workbench.tui.edits import parse_allocator_params


class ParamsScreen(ModalScreen[dict | None]):
    """One input per parameter of `allocator` (`given` completed with its defaults); enter accepts (the
    allocator checks the values), escape cancels. Dismisses with the values or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="params.cancel")]

    DEFAULT_CSS = """
    ParamsScreen { align: center middle; }
    ParamsScreen > Vertical {
        width: 70; max-width: 100%; height: auto; border: round $primary; background: $surface; padding: 0 1;
    }
    ParamsScreen Horizontal { height: auto; }
    ParamsScreen Horizontal > Label { width: 8; padding-top: 1; }
    ParamsScreen Input { width: 1fr; }
    ParamsScreen .hint { color: $foreground 60%; }
    ParamsScreen .error { color: $error; }
    """

    def __init__(self, allocator: str, given: dict[str, float]):
        super().__init__()
        self.allocator = allocator
        declared = ALLOCATORS.get(allocator)
        self.params = {**declared.defaults, **given}
        self.hints = declared.hints

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"{self.allocator} parameters")
            for key, value in self.params.items():
                with Horizontal():
                    yield Label(key)
                    yield Input(value=f"{value:g}", id=f"param-{key}")
                if key in self.hints:
                    yield Label(self.hints[key], classes="hint")
            yield Label("enter: apply   escape: cancel", classes="hint")
            yield Label("", classes="error", id="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        typed = {key: self.query_one(f"#param-{key}", Input).value for key in self.params}
        try:
            values = parse_allocator_params(self.allocator, typed)
        except ValueError as exc:
            self.query_one("#error", Label).update(str(exc))
            return
        self.dismiss(values)

    def action_cancel(self) -> None:
        self.dismiss(None)
