"""Plot: the |W| histogram of one linear, dense and after pruning."""

from __future__ import annotations

from textual_plotext import PlotextPlot


class HistogramPlot(PlotextPlot):
    """Counts per |W| bin: the dense weight, and the weights pruning kept (the small ones go first)."""

    def draw(self, name: str, edges: list[float], dense: list[int], pruned: list[int]) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
        plt.plot(centres, dense, label="dense", marker="hd")
        plt.plot(centres, pruned, label="kept after pruning", marker="x")
        plt.title(f"|W| of {name}")
        plt.xlabel("|W|")
        self.refresh()

    def draw_waiting(self, text: str) -> None:
        """An empty plot with a title (while the histogram is computed, or when there is nothing to show)."""
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(text)
        self.refresh()
