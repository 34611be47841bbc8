"""The plots: allocation across blocks with outlier ratios, the |W| histogram of the selected linear,
and probe results across the edit history."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane

from workbench.tui.allocation_plot import AllocationPlot
from workbench.tui.histogram_plot import HistogramPlot
from workbench.tui.probe_plot import ProbePlot


class PlotsScreen(Screen):
    """Three tabs (1, 2, 3 or left/right on the tab bar); escape or v goes back. The app feeds the data."""

    BINDINGS = [
        Binding("escape,v", "app.pop_screen", "Back", id="plots.back"),
        Binding("1", "tab('allocation')", "Allocation", id="plots.allocation"),
        Binding("2", "tab('histogram')", "Histogram", id="plots.histogram"),
        Binding("3", "tab('probes')", "Probes", id="plots.probes"),
    ]

    DEFAULT_CSS = """
    PlotsScreen TabbedContent { height: 1fr; }
    PlotsScreen TabPane { padding: 0; }
    """

    def __init__(self, tab: str = "allocation"):
        super().__init__()
        self.initial_tab = tab

    def compose(self) -> ComposeResult:
        with TabbedContent(initial=self.initial_tab):
            with TabPane("1 allocation", id="allocation"):
                yield AllocationPlot()
            with TabPane("2 |W| histogram", id="histogram"):
                yield HistogramPlot()
            with TabPane("3 probes", id="probes"):
                yield ProbePlot()
        yield Footer(show_command_palette=False)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    @property
    def allocation(self) -> AllocationPlot:
        return self.query_one(AllocationPlot)

    @property
    def histogram(self) -> HistogramPlot:
        return self.query_one(HistogramPlot)

    @property
    def probes(self) -> ProbePlot:
        return self.query_one(ProbePlot)
