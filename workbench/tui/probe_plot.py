"""Plot: probe results across the edit history, relative to the dense model."""

from __future__ import annotations

from textual_plotext import PlotextPlot


class ProbePlot(PlotextPlot):
    """One line per probe: its score divided by the dense score (1.0 = as good as dense), per edit."""

    def draw(self, edits: list[int], series: dict[str, list[float | None]], dense: dict) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        for name, scores in series.items():
            reference = dense[name].score if name in dense else 0.0
            points = [(x, s / reference if reference else s) for x, s in zip(edits, scores) if s is not None]
            if points:
                xs, ys = zip(*points)
                plt.plot(list(xs), list(ys), label=name + (" / dense" if reference else ""), marker="hd")
        plt.title("probes across the edit history" if series else "no probe results yet: press t on the main screen")
        plt.xlabel("edit")
        self.refresh()
