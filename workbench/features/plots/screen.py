"""The Plots screen: allocation across blocks with outlier ratios (and influence scores once computed, and the width
per block with the depth scores once the plan is structured or they are computed), the |W| histogram of the selected linear, and probe results across the edit history."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane
from textual.worker import Worker

from workbench.app.controller import Controller
from workbench.app.format import block_widths, pct, structured
from workbench.tui.messages import HistogramReady
from workbench.tui.widgets.plots import AllocationPlot, BudgetPlot, HistogramPlot, InfluencePlot, ProbePlot, StructurePlot

if TYPE_CHECKING:
    from workbench.engine.facade import Engine


class PlotsScreen(Screen):
    """Three tabs (1, 2, 3 or left/right on the tab bar); escape or v goes back. It draws what the
    controller holds, and asks the engine for the |W| histogram of `linear` (in a worker)."""

    BINDINGS = [
        Binding("escape,v", "app.pop_screen", "Back", id="plots.back"),
        Binding("1", "tab('allocation')", "Allocation", id="plots.allocation"),
        Binding("2", "tab('histogram')", "Histogram", id="plots.histogram"),
        Binding("3", "tab('probes')", "Probes", id="plots.probes"),
    ]

    DEFAULT_CSS = """
    PlotsScreen TabbedContent { height: 1fr; }
    PlotsScreen TabPane { padding: 0; }
    PlotsScreen InfluencePlot, PlotsScreen StructurePlot, PlotsScreen BudgetPlot { height: 40%; display: none; }
    PlotsScreen InfluencePlot.-shown, PlotsScreen StructurePlot.-shown, PlotsScreen BudgetPlot.-shown { display: block; }
    """

    def __init__(self, controller: Controller, engine: Engine, linear: str, tab: str = "allocation"):
        super().__init__()
        self.controller = controller
        self.engine = engine
        self.linear = linear
        self.initial_tab = tab

    def compose(self) -> ComposeResult:
        with TabbedContent(initial=self.initial_tab):
            with TabPane("1 allocation", id="allocation"):
                yield AllocationPlot()
                yield InfluencePlot()
                yield StructurePlot()
            with TabPane("2 |W| histogram", id="histogram"):
                yield HistogramPlot()
            with TabPane("3 probes", id="probes"):
                yield ProbePlot()
                yield BudgetPlot()
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.call_after_refresh(self.refresh_plots)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def refresh_plots(self, histogram: bool = True) -> None:
        """Redraw from the controller (the state or the probe results changed); with `histogram`, the
        |W| histogram is computed again too."""
        controller, plan = self.controller, self.controller.plan
        blocks = controller.state.blocks
        self.query_one(AllocationPlot).draw(controller.block_targets(), [b.achieved for b in blocks],
                                            [b.outlier_ratio for b in blocks],
                                            f"{plan.allocator} allocation, target {pct(plan.sparsity)}")
        influence = [b.influence for b in blocks]
        shown = any(s is not None for s in influence)
        self.query_one(InfluencePlot).set_class(shown, "-shown")
        if shown:
            self.query_one(InfluencePlot).draw(influence)
        bi, angular = [b.block_influence for b in blocks], [b.angular_distance for b in blocks]
        widths = block_widths(blocks, self.engine.shaper.hidden)
        shown = structured(plan.structure, blocks) or any(s is not None for s in bi)
        self.query_one(StructurePlot).set_class(shown, "-shown")
        if shown:
            self.query_one(StructurePlot).draw(widths, bi, angular)
        edits, series = controller.history.probe_series()
        self.query_one(ProbePlot).draw(edits, series, controller.dense_probes)
        reasoning = {label: r for label, r in (("dense", controller.dense_probes.get("reasoning")),
                                               ("pruned", next((p for p in controller.current_probes if p.name == "reasoning"), None)))
                     if r is not None}
        self.query_one(BudgetPlot).set_class(bool(reasoning), "-shown")
        if reasoning:
            self.query_one(BudgetPlot).draw(reasoning)
        if histogram:
            self.query_one(HistogramPlot).draw_waiting(f"computing the |W| histogram of {self.linear}…")
            self._histogram_worker(self.linear)

    @work(thread=True, exclusive=True, group="histogram", exit_on_error=False)
    def _histogram_worker(self, name: str) -> None:
        edges, dense, pruned = self.engine.histogram(name)
        self.post_message(HistogramReady(name, edges, dense, pruned))

    def on_histogram_ready(self, message: HistogramReady) -> None:
        self.query_one(HistogramPlot).draw(message.name, message.edges, message.dense, message.pruned)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Worker failures are reported by the app, in one place."""
        self.app.post_message(Worker.StateChanged(event.worker, event.state))
