"""The Compare screen: variants side by side. A table with one row per probe (and the plan, achieved
sparsity, weights left and prune time) and one column per variant after the dense reference, and a plot
of the variants' allocations. The Compare feature runs the comparison as a job; this screen edits the
controller's variants and asks the feature to run them or to make one the current plan."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import Worker

from workbench.app.controller import Controller
from workbench.app.edits import allocator_options, method_options
from workbench.app.format import Cell, comparison_labels, dense_column, pct, variant_column
from workbench.domain.plan import MAX_SPARSITY
from workbench.tui.screens.picker import PickerScreen
from workbench.tui.screens.value_prompt import ValuePrompt
from workbench.tui.widgets.activity import Activity
from workbench.tui.widgets.plots import VariantsPlot

DENSE = "dense"
VARIANT = "variant:"  # column keys of the variants: "variant:owl"


class CompareTable(DataTable):
    """The comparison table; enter on a column makes that variant the current plan."""

    BINDINGS = [Binding("enter", "select_cursor", "Use column", id="compare.use")]


class CompareScreen(Screen):
    """p adds the current plan, a adds a variant (allocator, method, target), delete removes the column,
    r runs the variants not measured yet (escape cancels), h has each run variant also healed (a NAME+heal
    column), enter on a column uses it; c or escape goes back."""

    BINDINGS = [
        Binding("escape", "back", "Back / cancel", id="compare.back"),
        Binding("c", "app.pop_screen", "Back", show=False, id="compare.close"),
        Binding("p", "add_plan", "Add plan", id="compare.add_plan"),
        Binding("a", "add_variant", "Add variant", id="compare.add_variant"),
        Binding("delete,backspace", "remove", "Remove", id="compare.remove"),
        Binding("r", "run", "Run", id="compare.run"),
        Binding("h", "heal", "Heal on/off", id="compare.heal"),
    ]

    DEFAULT_CSS = """
    CompareScreen > #compare-status { height: 1; padding: 0 1; background: $panel; text-wrap: nowrap;
                                      text-overflow: ellipsis; }
    CompareScreen > CompareTable { height: auto; max-height: 60%; }
    CompareScreen > VariantsPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, feature, controller: Controller, probes: list[str]):
        super().__init__()
        self.feature = feature  # the Compare feature (`workbench.features.compare.feature`): runs and uses variants
        self.controller = controller
        self.probes = probes

    def compose(self) -> ComposeResult:
        yield Static("", id="compare-status")
        yield Activity()
        yield CompareTable(fixed_columns=1, cursor_type="column", zebra_stripes=True)
        yield VariantsPlot()
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.refresh_view()
        table = self.query_one(CompareTable)
        table.focus()
        table.scroll_to(x=0, animate=False)  # opens on the labels and the dense column, never scrolled right

    # ----- showing ------------------------------------------------------------------------------------
    @property
    def shown_probes(self) -> list[str]:
        """The probe rows: those of the comparison, then any the next run adds."""
        comparison = self.controller.variants.comparison
        known = list(comparison.probes) if comparison else []
        return known + [p for p in self.probes if p not in known]

    def refresh_view(self) -> None:
        """Rebuild the table and the plot from the controller (the cursor stays on its column)."""
        comparison, probes = self.controller.variants.comparison, self.shown_probes
        columns = self.controller.variants.columns
        table = self.query_one(CompareTable)
        cursor = table.cursor_column
        table.clear(columns=True)
        table.add_column("", key="label")
        table.add_column(DENSE, key=DENSE)
        for name, _, _ in columns:
            table.add_column(name, key=VARIANT + name)
        cells = [dense_column(probes, comparison)]
        rows = {row.probe: row for row in comparison.rows()} if comparison else {}
        cells += [variant_column(plan, result, probes, comparison, rows) for _, plan, result in columns]
        for row, label in enumerate(comparison_labels(probes)):
            height = max(column[row].text.count("\n") + 1 for column in cells)  # 2 with a score's interval
            table.add_row(Text(label, style="bold"), *[self._styled(column[row]) for column in cells], height=height)
        table.move_cursor(column=min(max(cursor, 1), len(columns) + 1))
        measured = {name: result.block_targets for name, _, result in columns if result is not None}
        self.query_one(VariantsPlot).draw(measured, comparison.outlier_ratios if comparison else None)
        self._show_status()

    def _styled(self, cell: Cell) -> Text:
        """A cell as Rich text in the theme's colours (a second line, a score's interval, dimmed)."""
        style = cell.tone if cell.tone in ("", "dim") else self.app.get_css_variables().get(cell.tone, "")
        text = Text(cell.text, style=style, no_wrap=True)
        if "\n" in cell.text:
            text.stylize("dim", cell.text.index("\n") + 1)
        return text

    def _show_status(self) -> None:
        """The header: what waits to run, or what runs (its progress is on the activity line below)."""
        queued = len(self.controller.variants.queued)
        if self.feature.running:
            waiting = f"running {queued} variant{'s' if queued != 1 else ''} (esc cancels) · "
        else:
            waiting = f"{queued} to run (r) · " if queued else ""
        hint = "p adds the plan · a adds a variant" if not self.controller.variants.columns else "enter uses a column"
        healing = " · healed too (h)" if self.feature.heal else ""
        self.query_one("#compare-status", Static).update(
            f"Compare · {waiting}probes: {', '.join(self.shown_probes)} (quick){healing} · {hint}")

    # ----- editing the variants -----------------------------------------------------------------------
    def action_add_plan(self) -> None:
        """Add the current plan (with its manual targets) as a variant."""
        self._added(self.controller.variants.add("current", self.controller.plan))

    @work(exclusive=True, group="add-variant", exit_on_error=False)
    async def action_add_variant(self) -> None:
        """Ask for an allocator, a method and a global target, then add that variant."""
        from workbench.studies.compare import grid

        plan = self.controller.plan
        allocator = await self.app.push_screen_wait(PickerScreen("Variant: allocator", allocator_options(), plan.allocator))
        if allocator is None:
            return
        method = await self.app.push_screen_wait(PickerScreen("Variant: method", method_options(), plan.method))
        if method is None:
            return
        sparsity = await self.app.push_screen_wait(ValuePrompt(f"Variant {method} / {allocator}: global target",
                                                               plan.sparsity, MAX_SPARSITY))
        if sparsity is None:
            return
        variant = grid([method], [allocator], sparsity, plan.pattern)[0]
        name = variant.name if method == plan.method else f"{method}/{allocator}"
        if sparsity != plan.sparsity:
            name += f" {pct(sparsity, 0)}"
        self._added(self.controller.variants.add(name, variant.plan))

    def _added(self, name: str) -> None:
        self.refresh_view()
        self.query_one(CompareTable).move_cursor(column=len(self.controller.variants.columns) + 1)
        self.notify(f"added {name}; r runs it")

    def _cursor_variant(self) -> str | None:
        """The variant under the cursor (None on the dense column)."""
        table = self.query_one(CompareTable)
        if not table.columns:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).column_key.value or ""
        return key.removeprefix(VARIANT) if key.startswith(VARIANT) else None

    def action_remove(self) -> None:
        name = self._cursor_variant()
        if name is not None:
            self.controller.remove_variant(name)
            self.refresh_view()

    # ----- running and using --------------------------------------------------------------------------
    def action_run(self) -> None:
        if not self.controller.variants.queued:
            self.notify("nothing to run: p adds the current plan, a adds a variant")
        elif self.feature.running:
            self.notify("the comparison is running; escape cancels it")
        else:
            self.feature.run()

    def action_heal(self) -> None:
        """Have each variant run from now on also healed (masked LoRA, the default spec), or not."""
        self.feature.heal = not self.feature.heal
        self._show_status()

    def action_back(self) -> None:
        """Cancel the running comparison, else go back to the blocks."""
        if self.feature.running:
            self.app.action_cancel()
        else:
            self.app.pop_screen()

    def on_data_table_column_selected(self, event: DataTable.ColumnSelected) -> None:
        name = self._cursor_variant()
        if name is None:
            self.notify("the dense model is the reference; pick a variant")
        elif self.controller.variants.variant(name) is None:
            self.notify(f"{name} is not measured yet: r runs it")
        else:
            self.feature.use(name)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Worker failures are reported by the app, in one place."""
        self.app.post_message(Worker.StateChanged(event.worker, event.state))
