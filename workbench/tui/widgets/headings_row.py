"""The column headings above the block list, aligned with `StatRow`."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from workbench.app.format import CORE_COLUMNS, EXTRA_COLUMNS, WIDTH_CELL, columns_width, headings
from workbench.tui.widgets.stat_row import LABEL_WIDTH


class HeadingsRow(Horizontal):
    """blk, target sparsity, the width column (once the plan shrinks or drops anything), the sensitivity
    column (once there is a scan), the influence column (once LayerIF scores are computed), the depth column
    (once block scores are computed) and the statistic columns (extra ones on wide terminals)."""

    DEFAULT_CSS = f"""
    HeadingsRow {{ height: 1; color: $foreground 60%; text-style: bold; }}
    HeadingsRow > .row-label {{ width: {LABEL_WIDTH}; }}
    HeadingsRow > .heading-target {{ width: 1fr; min-width: 12; }}
    HeadingsRow > .stats {{ width: {columns_width(CORE_COLUMNS) + 1}; padding-left: 1; }}
    HeadingsRow > .stats-extra {{ width: {columns_width(EXTRA_COLUMNS) + 1}; padding-left: 1; display: none; }}
    """

    def compose(self) -> ComposeResult:
        yield Static("blk", classes="row-label")
        yield Static("target sparsity", classes="heading-target")
        yield Static(f"{'width':>{WIDTH_CELL}}", classes="width")
        yield Static("", classes="heat")
        yield Static(f"{'infl':>6}", classes="influence")
        yield Static(f"{'bi':>5} {'ang':>5}", classes="depth")
        yield Static(headings(CORE_COLUMNS), classes="stats")
        yield Static(headings(EXTRA_COLUMNS), classes="stats-extra")

    def show_heat(self, heading: str) -> None:
        """The heading of the sensitivity column (e.g. "Δppl")."""
        self.query_one(".heat", Static).update(heading)
