"""The Heal screen: the probes before and after healing side by side (dense, before, after, the change
with its paired 95% interval) and the run's summary. Escape or h goes back; any edit undoes the healing."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from workbench.features.heal.table import COLUMNS, rows, summary


class HealScreen(Screen):
    """See the module docstring."""

    BINDINGS = [Binding("escape,h", "app.pop_screen", "Back", id="heal.back")]

    DEFAULT_CSS = """
    HealScreen > Static { height: auto; padding: 0 1; background: $panel; }
    HealScreen > DataTable { height: auto; }
    """

    def __init__(self, record, after, dense):
        super().__init__()
        self.record, self.after, self.dense = record, after, dense

    def compose(self) -> ComposeResult:
        yield Static(summary(self.record), id="heal-summary")
        yield DataTable(id="heal-table", cursor_type="row", zebra_stripes=True)
        yield Static("Any edit of the plan undoes the healing; save keeps it (the trained tensors beside the session).",
                     id="heal-note")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*COLUMNS)
        for row in rows(self.record, self.after, self.dense):
            table.add_row(*row)
