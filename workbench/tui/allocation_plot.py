"""Plot: the target sparsity of each block (with what was achieved) and its outlier ratio underneath."""

from __future__ import annotations

from textual_plotext import PlotextPlot


class AllocationPlot(PlotextPlot):
    """Target and achieved sparsity per block (left axis, percent) over outlier-ratio bars (right axis)."""

    def draw(self, targets: list[float], achieved: list[float], outliers: list[float | None], title: str) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        blocks = list(range(len(targets)))
        if any(o is not None for o in outliers):
            plt.bar(blocks, [100 * (o or 0.0) for o in outliers], label="outlier % (right)", yside="right",
                    width=0.4, fill=False)
        plt.plot(blocks, [100 * t for t in targets], label="target %", marker="hd")
        plt.scatter(blocks, [100 * a for a in achieved], label="achieved %", marker="x")
        plt.title(title)
        plt.xlabel("block")
        self.refresh()
