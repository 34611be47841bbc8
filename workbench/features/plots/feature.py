"""The Plots feature: opens the Plots screen on the selected linear and redraws it when a prune or the
probes bring new numbers."""

from __future__ import annotations

from workbench.tui.commands import Command
from workbench.tui.feature import FEATURES, Feature
from workbench.features.plots.screen import PlotsScreen


@FEATURES.add
class PlotsFeature(Feature):
    """See the module docstring."""

    name = "plots"
    order = 1
    commands = (Command("app.plots", "v", "feature('plots')", "Plots",
                        tooltip="Plots: allocation, |W| histogram, probe history",
                        palette="Plots", about="Allocation, |W| histogram, probe history"),)
    help = ("Plots screen (v)", PlotsScreen.BINDINGS)
    screens = (PlotsScreen,)

    def start(self) -> None:
        app = self.app
        if app.has_model() and app.controller.state is not None:
            linear = app.blocks.selected_linear or app.controller.default_linear()
            app.push_screen(PlotsScreen(app.controller, app.engine, linear))

    def redraw(self, histogram: bool) -> None:
        """Redraw the Plots screen when it is shown (with `histogram`, the |W| histogram is computed again)."""
        if isinstance(self.app.screen, PlotsScreen):
            self.app.screen.refresh_plots(histogram=histogram)
