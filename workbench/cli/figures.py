"""Pictures for reports and slides (matplotlib, no display needed): a comparison's per-block allocations
overlaid with the dense model's outlier ratio, and each probe's score per variant against dense, its error
bar the paired 95% interval of its difference from dense (placed around the score: dense + [low, high])."""

from __future__ import annotations

import math
import os
from pathlib import Path

from workbench.infra.atomic import atomic_write_bytes
from workbench.infra.errors import WorkbenchError
from workbench.studies.compare import Comparison

FORMATS = ("png", "svg")


def check_format(path: Path) -> str:
    """The picture format of a file name (png or svg), or a one-line error."""
    kind = path.suffix.lower().lstrip(".")
    if kind not in FORMATS:
        raise WorkbenchError(f"--plot {path}", f"the file name must end in {' or '.join('.' + f for f in FORMATS)}")
    return kind


def comparison_figure(comparison: Comparison, path: str | os.PathLike, title: str = "") -> Path:
    """Write the comparison picture to `path` (PNG or SVG by its extension), atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = Path(path)
    kind = check_format(path)
    probes = comparison.probes
    columns = min(len(probes), 3)
    rows = 1 + math.ceil(len(probes) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.0 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, columns)
    top = fig.add_subplot(grid[0, :])
    for r in comparison.results:
        top.plot(range(len(r.block_targets)), [100 * t for t in r.block_targets], marker=".", label=r.name)
    top.set_xlabel("block")
    top.set_ylabel("target sparsity (%)")
    top.set_title(title or "allocation per block")
    if comparison.outlier_ratios is not None:
        twin = top.twinx()
        twin.plot(range(len(comparison.outlier_ratios)), [100 * x for x in comparison.outlier_ratios],
                  color="grey", linestyle="--", label="outlier ratio (dense)")
        twin.set_ylabel("outlier ratio (%)")
        twin.legend(loc="upper right", fontsize="small")
    top.legend(loc="upper left", fontsize="small")
    names = [r.name for r in comparison.results]
    for i, probe in enumerate(probes):
        ax = fig.add_subplot(grid[1 + i // columns, i % columns])
        scores = [r.probe(probe).score if r.probe(probe) else float("nan") for r in comparison.results]
        ax.bar(range(len(names)), scores, color=[f"C{n}" for n in range(len(names))], yerr=error_bars(comparison, probe),
               capsize=3, error_kw={"elinewidth": 1})
        dense = comparison.dense_probe(probe)
        if dense is not None:
            ax.axhline(dense.score, color="black", linestyle=":", label="dense")
            ax.legend(fontsize="small")
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize="small")
        better = "higher" if dense is None or dense.higher_is_better else "lower"
        ax.set_title(f"{probe} ({better} is better)", fontsize="medium")
        if probe == "perplexity":
            ax.set_yscale("log")
    fig.supxlabel("error bars: the paired 95% bootstrap interval of each variant's difference from dense", fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=kind)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def error_bars(comparison: Comparison, probe: str) -> list[list[float]]:
    """Matplotlib's yerr for one probe's bars: below and above each variant's score, the paired 95% interval
    of its difference from dense moved onto the score (0 where there is no interval)."""
    row = comparison.row(probe)
    dense = comparison.dense_probe(probe)
    below, above = [], []
    for r in comparison.results:
        p, delta = r.probe(probe), row.deltas.get(r.name)
        if p is None or delta is None or dense is None:
            below.append(0.0)
            above.append(0.0)
        else:
            below.append(max(0.0, p.score - (dense.score + delta.low)))
            above.append(max(0.0, dense.score + delta.high - p.score))
    return [below, above]
