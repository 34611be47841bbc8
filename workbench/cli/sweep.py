"""Cost curves: `workbench bench --sizes A,B,...` runs the bench on each model (and each calibration
sample count of `--sweep-samples`) and shows how every stage's time and peak memory grow with the
parameters and the calibration tokens.

Each run is a child `workbench bench --json` process, so its peaks are its own. Without `--only` the sweep
runs SWEEP_STAGES: load, the dense forward pass, a sequential Wanda prune, re-pruning one linear, the quick
perplexity probe and the efficiency probe (the probe suite, SparseGPT and the comparison would take the
15 minutes of a 2-core machine alone at 1B). The exponents are log-log least-squares fits, time ~
params^a x tokens^b (a alone when the tokens do not vary, b alone when the models do not), and peak ~
params^c at the largest token count.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from workbench.infra.atomic import atomic_write_bytes
from workbench.infra.errors import WorkbenchError

SWEEP_STAGES = ("load-cached", "forward", "wanda", "reprune-linear", "perplexity", "efficiency")
PASSED = ("device", "dtype", "calibration", "seqlen", "seed", "mode")  # bench options every child gets


def run_sweep(args) -> int:
    """Run the sweep of `args.sizes`, print the table (and JSON), write `--plot`; exit 1 when a child's
    stage missed its target."""
    from workbench.cli.figures import check_format

    sizes = [s for s in args.sizes.split(",") if s]
    samples = [int(n) for n in args.sweep_samples.split(",") if n] if args.sweep_samples else [args.samples]
    if args.plot:
        check_format(Path(args.plot))
    stages = args.only or ",".join(SWEEP_STAGES)
    start = time.perf_counter()
    runs, failed = [], False
    for size in sizes:
        for n in samples:
            report, code = _child(size, n, stages, args)
            runs.append(report)
            failed |= code == 1
    fits = exponents(runs)
    result = {"runs": runs, "exponents": fits, "wall_seconds": round(time.perf_counter() - start, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table(runs, fits))
        print(f"sweep wall time {result['wall_seconds']:.0f} s")
        print(json.dumps(result))
    if args.plot:
        plot(runs, Path(args.plot))
    return 1 if failed else 0


def _child(model: str, samples: int, stages: str, args) -> tuple[dict, int]:
    """One `workbench bench --json` run in a child process: its report and exit code."""
    command = [sys.executable, "-m", "workbench.cli", "bench", "--model", model, "--samples", str(samples),
               "--only", stages, "--json"]
    for name in PASSED:
        command += [f"--{name}", str(getattr(args, name))]
    if args.hessian:
        command.append("--hessian")
    if args.offload:
        command.append("--offload")
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr (notices, errors) passes through
    if done.returncode not in (0, 1):
        raise WorkbenchError(f"--sizes {model}", f"the bench of this size failed (exit {done.returncode}, its error above)")
    report = json.loads(done.stdout)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    return report, done.returncode


def _fit(xs: list[list[float]], ys: list[float]) -> list[float]:
    """Least-squares exponents of y ~ prod(x_i ^ a_i) in log-log."""
    design = np.column_stack([np.log(np.array(xs, dtype=float)), np.ones(len(ys))])
    solution, *_ = np.linalg.lstsq(design, np.log(np.array(ys, dtype=float)), rcond=None)
    return [round(float(a), 3) for a in solution[:-1]]


def exponents(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per stage: time vs params and vs tokens (those that vary), and peak vs params at the largest
    token count; a stage measured on fewer than two distinct points gets none."""
    out: dict[str, dict[str, float]] = {}
    stage_names = dict.fromkeys(row["stage"] for run in runs for row in run["stages"])
    most_tokens = max(run["meta"]["calibration_tokens"] for run in runs)
    for stage in stage_names:
        points = [(run["meta"]["params"], run["meta"]["calibration_tokens"], row)
                  for run in runs for row in run["stages"] if row["stage"] == stage and row["seconds"] > 0]
        vary = [axis for axis in (0, 1) if len({p[axis] for p in points}) > 1]  # params, tokens
        fit: dict[str, float] = {}
        if vary:
            slopes = _fit([[p[axis] for axis in vary] for p in points], [p[2]["seconds"] for p in points])
            fit.update({f"time_vs_{'params' if axis == 0 else 'tokens'}": a for axis, a in zip(vary, slopes)})
        peaks = [(p[0], p[2]["peak_mib"]) for p in points if p[1] == most_tokens and p[2]["peak_mib"] > 0]
        if len({params for params, _ in peaks}) > 1:
            fit["peak_vs_params"] = _fit([[params] for params, _ in peaks], [peak for _, peak in peaks])[0]
        out[stage] = fit
    return out


def _label(run: dict) -> str:
    """`NAME PARAMSM TOKENSt`: NAME is the spec without `random:` (a config file's stem or directory)."""
    meta = run["meta"]
    path = Path(meta["model"].removeprefix("random:"))
    name = path.parent.name if path.stem == "config" else path.stem
    return f"{name} {meta['params'] / 1e6:.3g}M {meta['calibration_tokens']}t"


def table(runs: list[dict], fits: dict) -> str:
    """Stages down, runs across (seconds and peak MiB each), the fitted exponents last."""
    labels = [_label(r) for r in runs]
    width = max(18, *(len(label) for label in labels))
    head = f"{'stage':<15}" + "".join(f" {label:>{width}}" for label in labels) + "   t~params  t~tokens  peak~params"
    lines = [head, " " * 15 + "".join(f" {'seconds / peak MiB':>{width}}" for _ in runs)]
    for stage, fit in fits.items():
        cells = []
        for run in runs:
            row = next((r for r in run["stages"] if r["stage"] == stage), None)
            cells.append("-" if row is None else f"{row['seconds']:.2f} / {row['peak_mib']:.0f}")
        exps = "".join(f"{fit[key]:>10.2f}" if key in fit else f"{'-':>10}"
                       for key in ("time_vs_params", "time_vs_tokens", "peak_vs_params"))
        lines.append(f"{stage:<15}" + "".join(f" {c:>{width}}" for c in cells) + " " + exps)
    budgets = [f"{_label(r)}: dense weights {r['meta']['dense_weight_mib']:.0f} MiB, prune budget "
               f"{r['meta']['memory_budget_mib']:.0f} MiB, run {r['wall_seconds']:.0f} s" for r in runs]
    return "\n".join(lines + budgets)


def plot(runs: list[dict], path: Path) -> Path:
    """Time and peak memory of every stage against parameters, log-log, one line per token count."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from workbench.cli.figures import check_format

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    time_ax, peak_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    stages = list(dict.fromkeys(row["stage"] for run in runs for row in run["stages"]))
    token_counts = sorted({run["meta"]["calibration_tokens"] for run in runs})
    for n, stage in enumerate(stages):
        for m, tokens in enumerate(token_counts):
            points = sorted((run["meta"]["params"], row) for run in runs if run["meta"]["calibration_tokens"] == tokens
                            for row in run["stages"] if row["stage"] == stage)
            if not points:
                continue
            style = dict(color=f"C{n}", marker="o", linestyle=("-", "--", ":", "-.")[m % 4],
                         label=stage if m == 0 else None)
            time_ax.plot([p for p, _ in points], [max(r["seconds"], 1e-3) for _, r in points], **style)
            peak_ax.plot([p for p, _ in points], [max(r["peak_mib"], 1.0) for _, r in points], **style)
    for ax, label in ((time_ax, "seconds"), (peak_ax, "peak MiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(label)
    dashes = ", ".join(f"{('solid', 'dashed', 'dotted', 'dash-dot')[m % 4]}: {t} tokens" for m, t in enumerate(token_counts))
    time_ax.set_title(f"time per stage ({dashes})", fontsize="medium")
    peak_ax.set_title("peak memory per stage", fontsize="medium")
    time_ax.legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=check_format(path))
    atomic_write_bytes(path, buffer.getvalue())
    return path
