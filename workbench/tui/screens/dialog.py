"""The modal box the small dialogs share: centred over the app, one bordered column, escape cancels."""

from __future__ import annotations

from typing import TypeVar

from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Label

Result = TypeVar("Result")


class Dialog(ModalScreen[Result]):
    """A centred, bordered `Vertical` of widgets; escape dismisses with None. A subclass composes the
    column (with a Label `#error` when it validates input) and sets its width in its own CSS."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]

    DEFAULT_CSS = """
    Dialog { align: center middle; }
    Dialog > Vertical {
        width: 64; max-width: 100%; height: auto; border: round $primary; background: $surface; padding: 0 1;
    }
    Dialog .error { color: $error; }
    """

    def show_error(self, text: str) -> None:
        """Say what is wrong with the input under the fields; the dialog stays open."""
        self.query_one("#error", Label).update(text)

    def action_cancel(self) -> None:
        self.dismiss(None)
