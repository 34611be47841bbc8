"""What runs in the background: a label and a progress bar, shown only while something runs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar


class Activity(Horizontal):
    """`show(kind, message, fraction)` while working, `hide()` after."""

    DEFAULT_CSS = """
    Activity { height: 1; display: none; background: $boost; }
    Activity.-busy { display: block; }
    Activity > Label { width: 1fr; padding-left: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    Activity > ProgressBar { width: 24; }
    Activity > ProgressBar > Bar { width: 16; }
    """

    def compose(self) -> ComposeResult:
        yield Label("")
        yield ProgressBar(total=1.0, show_eta=False)

    def show(self, message: str, fraction: float | None, cancellable: bool = False) -> None:
        """Show a message; `fraction` None means the length of the work is unknown."""
        self.add_class("-busy")
        self.query_one(Label).update(("esc cancels · " if cancellable else "") + message)
        bar = self.query_one(ProgressBar)
        if fraction is None:
            bar.update(total=None)
        else:
            bar.update(total=1.0, progress=min(max(fraction, 0.0), 1.0))

    @property
    def label(self) -> str:
        """The line shown (empty when hidden)."""
        return str(self.query_one(Label).content) if self.has_class("-busy") else ""

    def hide(self) -> None:
        self.remove_class("-busy")
