"""One transformer block: its row, and its linears underneath when expanded (a mixture-of-experts block's
routed experts as one group row, opened into one row per expert)."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.reactive import reactive

from workbench.app.edits import BlockKey, LinearKey
from workbench.app.format import Cell, Scale, row_label
from workbench.domain.plan import weighted_mean
from workbench.tui.widgets.stat_row import StatRow


class BlockPane(Vertical):
    """A block row with a slider and statistics; enter (or a click on its number) shows its linears, each
    with a slider of its own. Linear rows are built on first expansion. A dropped block is dimmed and struck
    through (class -dropped)."""

    BINDINGS = [Binding("enter,space", "toggle", "Expand/collapse block", id="block.toggle", show=False)]

    DEFAULT_CSS = """
    BlockPane { height: auto; }
    BlockPane > .linears { height: auto; display: none; }
    BlockPane.-expanded > .linears { display: block; }
    BlockPane.-expanded > .block-row { background: $boost; }
    BlockPane .linear-row > .row-label { color: $foreground 60%; }
    BlockPane .linear-row.-dropped > .row-label, BlockPane .linear-row.-dropped > .stats {
        color: $foreground 40%; text-style: strike;
    }
    BlockPane.-dropped > .block-row > .row-label, BlockPane.-dropped > .block-row > .stats {
        color: $foreground 40%; text-style: strike;
    }
    """

    expanded: reactive[bool] = reactive(False)
    experts_open: reactive[bool] = reactive(False)
    EXPERT_PAGE = 24  # expert rows built at once: a screenful; the next ones when focus reaches the last built

    def __init__(self, index: int, value: float = 0.0):
        super().__init__(id=f"block-{index}")
        self.index = index
        self.initial = value
        self._last: tuple | None = None
        self._columns: dict[str, Cell | None] = {}  # the optional columns' cells (width, sensitivity, influence...)
        self._experts_built = 0  # expert rows built under the open group (the first ones, in order)

    def compose(self) -> ComposeResult:
        yield StatRow(BlockKey(self.index), self._label(), f"block {self.index}", self.initial, classes="block-row")
        yield Vertical(classes="linears")

    def _label(self) -> str:
        return f"{'▾' if self.expanded else '▸'} {self.index:>3}"

    @property
    def row(self) -> StatRow:
        return self.query_one(".block-row", StatRow)

    def watch_expanded(self, expanded: bool) -> None:
        self.set_class(expanded, "-expanded")
        if not self.is_mounted:
            return
        self.row.set_label(self._label())
        holder = self.query_one(".linears", Vertical)
        if expanded and not holder.children and self._last is not None:
            holder.mount_all(self._new_rows(self._rows(self._last[0], experts=False)))
            if self.experts_open:
                self.watch_experts_open(True)
            self.call_after_refresh(self._show_linears)

    def _rows(self, block, experts: bool | None = None) -> list:
        """The rows an expanded block lists: its linears outside the routed experts, the experts' group row, and
        when the group is open (or `experts`), one row per expert."""
        rows = [x for x in block.linears if x.expert is None]
        if block.expert_group is not None:
            rows.append(block.expert_group)
            if self.experts_open if experts is None else experts:
                rows += block.experts
        return rows

    def _new_rows(self, rows: list) -> list[StatRow]:
        block, _, targets, _, _ = self._last
        return [StatRow(LinearKey(x.name), f" {row_label(x, block):<4}", x.name, self._target(x, targets),
                        classes="linear-row expert-row" if getattr(x, "expert", None) is not None and hasattr(x, "tokens")
                        else "linear-row") for x in rows]

    def _target(self, row, targets: dict[str, float]) -> float:
        """The plan's target of a row: a linear's, or the size-weighted one of the linears inside a module."""
        if row.name in targets:
            return targets[row.name]
        inside = [x for x in self._last[0].linears if x.name.startswith(f"{row.name}.") and x.name in targets]
        return weighted_mean((targets[x.name] for x in inside), (x.numel for x in inside)) if inside else row.target

    def watch_experts_open(self, opened: bool) -> None:
        """Build the expert rows under the group row when it opens (only then), remove them when it closes."""
        if not self.is_mounted or self._last is None or self._last[0].expert_group is None:
            return
        holder = self.query_one(".linears", Vertical)
        group = next((r for r in holder.query(StatRow) if r.key == LinearKey(self._last[0].expert_group.name)), None)
        if group is None:
            return
        if opened:
            self._build_experts(after=group)
        else:
            self._experts_built = 0
            for row in holder.query(".expert-row"):
                row.remove()

    def _build_experts(self, after: StatRow) -> None:
        """Build the next page of expert rows after `after` (a 128-expert block builds 24 rows, not 128)."""
        experts = self._last[0].experts[self._experts_built : self._experts_built + self.EXPERT_PAGE]
        self._experts_built += len(experts)
        self.query_one(".linears", Vertical).mount_all(self._new_rows(experts), after=after)
        self.call_after_refresh(self._show_linears)

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """Focus on the last expert row built: build the next page under it."""
        if not self.experts_open or self._last is None or self._experts_built >= len(self._last[0].experts):
            return
        rows = list(self.query(".expert-row").results(StatRow))
        if rows and (event.widget is rows[-1] or event.widget in rows[-1].query("*")):
            self._build_experts(after=rows[-1])

    def action_toggle(self) -> None:
        """Show or hide the linears (on the experts' group row: its experts); focus goes back to the block slider
        when they hide."""
        focused = self.screen.focused
        group = self._last[0].expert_group if self._last else None
        if group is not None and getattr(focused, "key", None) == LinearKey(group.name):
            self.experts_open = not self.experts_open
            return
        self.expanded = not self.expanded
        if not self.expanded and focused is not None and focused in self.query(".linears Slider"):
            self.screen.set_focus(self.row.slider)

    def on_click(self, event: events.Click) -> None:
        if event.widget is not None and event.widget.has_class("row-label"):
            self.action_toggle()

    def show(self, block, scale: Scale, targets: dict[str, float] | None, overridden: set[str], locked: bool) -> None:
        """Show a `BlockState`; with `targets` (per-linear targets of the plan shown) the sliders move too.
        `overridden` holds "block" and/or linear names with manual values."""
        known_targets = targets if targets is not None else (self._last[2] if self._last else {})
        self._last = (block, scale, known_targets, overridden, locked)
        if self.is_mounted:
            self._show_block(move=targets is not None)

    def show_column(self, column: str, cell: Cell | None) -> None:
        """The block's cell of an optional column ("width", "heat": sensitivity, "influence", "depth")."""
        self._columns[column] = cell
        if self.is_mounted:
            self.row.show_column(column, cell)

    def on_mount(self) -> None:
        if self._last is not None:
            self._show_block(move=True)
        for column, cell in self._columns.items():
            self.row.show_column(column, cell)

    def _show_block(self, move: bool) -> None:
        block, scale, targets, overridden, locked = self._last
        self.row.show(block, scale)
        if move and targets:
            value = weighted_mean((targets[x.name] for x in block.linears), (x.numel for x in block.linears))
            self.row.show_target(value, "block" in overridden, locked)
        self._show_linears(move)

    def _show_linears(self, move: bool = True) -> None:
        if self._last is None:
            return
        block, _, targets, overridden, locked = self._last
        rows = list(self.query(".linear-row").results(StatRow))
        if not rows:
            return
        shown = self._rows(block, experts=len(rows) > len(self._rows(block, experts=False)))
        scale = Scale.of(shown)
        for row, linear in zip(rows, shown):
            row.show(linear, scale)
            row.set_label(f" {row_label(linear, block):<4}")
            row.set_class(getattr(linear, "dropped", False), "-dropped")
            if move and targets:
                row.show_target(self._target(linear, targets), linear.name in overridden, locked)
