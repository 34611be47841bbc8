"""One line of the block list: a label, a sparsity slider, the width column (shown once the plan shrinks
or drops anything), the sensitivity column (shown once there is a scan), the influence column (shown once
LayerIF scores are computed), the depth column (block influence and angular distance, once computed) and
the statistics of a block or a linear."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from workbench.app.edits import SliderKey
from workbench.app.format import (CORE_COLUMNS, EXTRA_COLUMNS, Cell, Scale, cells_markup, columns_width, core_cells,
                                  extra_cells)
from workbench.tui.widgets.slider import Slider

LABEL_WIDTH = 6


class StatRow(Horizontal):
    """Label, slider and statistic columns; the extra columns show only on wide terminals."""

    DEFAULT_CSS = f"""
    StatRow {{ height: 1; width: 1fr; }}
    StatRow > .row-label {{ width: {LABEL_WIDTH}; color: $foreground 80%; }}
    StatRow > .stats {{ width: {columns_width(CORE_COLUMNS) + 1}; padding-left: 1; }}
    StatRow > .stats-extra {{ width: {columns_width(EXTRA_COLUMNS) + 1}; padding-left: 1; display: none; }}
    """

    def __init__(self, key: SliderKey, label: str, title: str, value: float = 0.0, classes: str | None = None):
        super().__init__(classes=classes)
        self.key = key
        self.label_text = label
        self.title = title
        self.initial = value

    def compose(self) -> ComposeResult:
        yield Static(self.label_text, classes="row-label")
        yield Slider(self.key, self.initial, label=self.title)
        yield Static("", classes="width")
        yield Static("", classes="heat")
        yield Static("", classes="influence")
        yield Static("", classes="depth")
        yield Static("", classes="stats")
        yield Static("", classes="stats-extra")

    @property
    def slider(self) -> Slider:
        return self.query_one(Slider)

    def set_label(self, label: str) -> None:
        """Change the text left of the slider."""
        self.label_text = label
        self.query_one(".row-label", Static).update(label)

    def show(self, row, scale: Scale) -> None:
        """Show the statistics of a `BlockState` or `LinearState`."""
        self.query_one(".stats", Static).update(cells_markup(core_cells(row, scale)))
        self.query_one(".stats-extra", Static).update(cells_markup(extra_cells(row)))

    def show_column(self, column: str, cell: Cell | None) -> None:
        """The cell of an optional column ("width", "heat": sensitivity, "influence", "depth"); None: blank."""
        self.query_one(f".{column}", Static).update(cells_markup([cell]) if cell else "")

    def show_target(self, value: float, overridden: bool, locked: bool) -> None:
        """Move the slider to `value` (no change message); mark manual values and locked sliders."""
        slider = self.slider
        slider.set_value(value)
        slider.set_class(overridden, "-overridden")
        slider.locked = locked
