"""The plots of the plots screen: the allocation across blocks with outlier ratios (and below it the LayerIF
influence scores once computed, and the width per block with block influence and angular distance once the
plan is structured or they are computed), the |W| histogram of one linear, and probe results across the
edit history; the Compare screen's plot of the variants' allocations; the Agent screen's perplexity and
global target per step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual_plotext import PlotextPlot

from workbench.agent.record import ACCEPTED, LABELS, ROLLED_BACK

if TYPE_CHECKING:
    from workbench.agent.record import StepRecord
    from workbench.probes import ProbeResult


class Plot(PlotextPlot):
    """A plotext plot that is redrawn from scratch each time."""

    def _clear(self):
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        return plt

    def _outlier_bars(self, outliers: list[float | None]) -> None:
        """Outlier ratios per block as bars on the right axis (percent); nothing when none is known."""
        if any(o is not None for o in outliers):
            self.plt.bar(list(range(len(outliers))), [100 * (o or 0.0) for o in outliers], label="outlier % (right)",
                         yside="right", width=0.4, fill=False)


class AllocationPlot(Plot):
    """Target and achieved sparsity per block (left axis, percent) over outlier-ratio bars (right axis)."""

    def draw(self, targets: list[float], achieved: list[float], outliers: list[float | None], title: str) -> None:
        plt = self._clear()
        blocks = list(range(len(targets)))
        self._outlier_bars(outliers)
        plt.plot(blocks, [100 * t for t in targets], label="target %", marker="hd")
        plt.scatter(blocks, [100 * a for a in achieved], label="achieved %", marker="x")
        plt.title(title)
        plt.xlabel("block")
        self.refresh()


class InfluencePlot(Plot):
    """The LayerIF influence score per block (lower: a better-trained block, pruned less)."""

    def draw(self, scores: list[float | None]) -> None:
        plt = self._clear()
        points = [(i, s) for i, s in enumerate(scores) if s is not None]
        plt.plot([i for i, _ in points], [s for _, s in points], label="influence", marker="hd")
        plt.xticks(list(range(len(scores))))
        plt.title("influence score per block (lower: pruned less)")
        plt.xlabel("block")
        self.refresh()


class StructurePlot(Plot):
    """The GLU expansion ratio each block runs with (left axis; 0: dropped), with block influence and the
    angular distance to the next block (right axis) once computed."""

    def draw(self, widths: list[float], influence: list[float | None], angular: list[float | None]) -> None:
        plt = self._clear()
        blocks = list(range(len(widths)))
        plt.bar(blocks, widths, label="width x (0: dropped)", width=0.4, fill=False)
        for name, scores in (("block influence (right)", influence), ("angular distance (right)", angular)):
            points = [(i, s) for i, s in enumerate(scores) if s is not None]
            if points:
                plt.plot([i for i, _ in points], [s for _, s in points], label=name, marker="hd", yside="right")
        plt.xticks(blocks)
        plt.title("width and depth scores per block")
        plt.xlabel("block")
        self.refresh()


class HistogramPlot(Plot):
    """Counts per |W| bin: the dense weight, and the weights pruning kept (the small ones go first)."""

    def draw(self, name: str, edges: list[float], dense: list[int], pruned: list[int]) -> None:
        plt = self._clear()
        centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
        plt.plot(centres, dense, label="dense", marker="hd")
        plt.plot(centres, pruned, label="kept after pruning", marker="x")
        plt.title(f"|W| of {name}")
        plt.xlabel("|W|")
        self.refresh()

    def draw_waiting(self, text: str) -> None:
        """An empty plot with a title (while the histogram is computed, or when there is nothing to show)."""
        self._clear().title(text)
        self.refresh()


class ProbePlot(Plot):
    """One line per probe: its score divided by the dense score (1.0 = as good as dense), per edit."""

    def draw(self, edits: list[int], series: dict[str, list[float | None]], dense: dict[str, ProbeResult]) -> None:
        plt = self._clear()
        for name, scores in series.items():
            reference = dense[name].score if name in dense else 0.0
            points = [(x, s / reference if reference else s) for x, s in zip(edits, scores) if s is not None]
            if points:
                xs, ys = zip(*points)
                plt.plot(list(xs), list(ys), label=name + (" / dense" if reference else ""), marker="hd")
        plt.title("probes across the edit history" if series else "no probe results yet: press t on the main screen")
        plt.xlabel("edit")
        self.refresh()


class BudgetPlot(Plot):
    """The reasoning probe's accuracy per thinking budget, dense and pruned (left axis), and the mean thinking
    tokens each used (right axis)."""

    def draw(self, results: dict[str, ProbeResult]) -> None:
        plt = self._clear()
        for label, result in results.items():
            budgets = sorted(result.details.get("budgets", {}), key=int)
            xs = [int(b) for b in budgets]
            plt.plot(xs, [result.details["budgets"][b]["accuracy"] for b in budgets], label=f"{label} accuracy", marker="hd")
            plt.plot(xs, [result.details["budgets"][b]["mean_tokens"] for b in budgets], label=f"{label} tokens (right)",
                     marker="dot", yside="right")
        plt.title("reasoning: accuracy per thinking budget")
        plt.xlabel("thinking budget (tokens)")
        self.refresh()


class VariantsPlot(Plot):
    """One line per measured variant: its target per block (left axis, percent), over the dense model's
    outlier-ratio bars (right axis)."""

    def draw(self, allocations: dict[str, list[float]], outliers: list[float] | None) -> None:
        plt = self._clear()
        self._outlier_bars(outliers or [])
        for name, targets in allocations.items():
            plt.plot(list(range(len(targets))), [100 * t for t in targets], label=name, marker="hd")
        plt.title("target % per block" if allocations else "no results yet: r runs the variants")
        plt.xlabel("block")
        self.refresh()


class AgentPlot(Plot):
    """The measured value per step (left axis: accepted steps as a line, rolled-back ones as crosses) and the
    global target after each step (right axis, percent)."""

    def draw(self, records: list[StepRecord], measure: str) -> None:
        plt = self._clear()
        for outcome, marker, plot in ((ACCEPTED, "hd", plt.plot), (ROLLED_BACK, "x", plt.scatter)):
            points = [(r.index, r.score) for r in records if r.outcome == outcome and r.score is not None]
            if points:
                plot([x for x, _ in points], [y for _, y in points], label=f"{LABELS[measure]} {outcome}", marker=marker)
        if records:
            plt.plot([r.index for r in records], [100 * r.sparsity for r in records], label="global % (right)",
                     marker="dot", yside="right")
        plt.title("perplexity and global target per step" if records else "no steps yet: r runs the agent")
        plt.xlabel("step")
        self.refresh()
