"""`workbench bench`: wall time and peak memory of every stage, as a table and as JSON.

Stages: model load (first, from an empty cache, and cached), one dense forward pass over the calibration
tokens (the unit every other time is divided by), calibration capture, each method's full prune at 50%
(sequential; Wanda also one-pass), re-pruning one linear and one block from cached statistics, the
perplexity probe and the quick probe suite. The first load runs in a child process with an empty cache
(its time includes starting Python). Peak memory is the process's peak resident set during the stage
(Linux VmHWM, reset before each stage) minus its resident set once the libraries are imported and the
calibration text is tokenized, before the weights are loaded; on CUDA it is torch's peak allocated
device memory. The memory budget is 2.5x the dense weight bytes plus one
block's calibration activations (the hidden states entering and leaving it).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer

from workbench.capture import ONE_PASS, SEQUENTIAL, capture, dense_forward
from workbench.data import calibration_windows
from workbench.engine import CalibrationSpec, Engine, Plan
from workbench.errors import WorkbenchError
from workbench.model import load_model, resolve_source
from workbench.probes import PROBES

STAGES = ("load-first", "load-cached", "forward", "capture", "wanda", "wanda-one-pass", "sparsegpt", "magnitude",
          "reprune-linear", "reprune-block", "perplexity", "probe-suite")


@dataclass
class Row:
    stage: str
    seconds: float
    ratio: float | None
    peak_mib: float
    target: str
    ok: bool | None


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mib(device: torch.device, baseline_kib: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (_rss_kib("VmHWM:") - baseline_kib) / 1024


HEADER = f"{'stage':<16} {'seconds':>8} {'x fwd':>6} {'peak MiB':>9}  {'target':<40} ok"


def _format_row(r: Row) -> str:
    ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
    ok = "" if r.ok is None else ("yes" if r.ok else "NO")
    return f"{r.stage:<16} {r.seconds:>8.3f} {ratio:>6} {r.peak_mib:>9.0f}  {r.target:<40} {ok}"


def run_bench(args) -> int:
    """Run the selected stages on `args.model` and print the table (or JSON with --json)."""
    only = {s for s in args.only.split(",") if s}
    unknown = only - set(STAGES)
    if unknown:
        raise WorkbenchError("--only", f"unknown stage(s) {', '.join(sorted(unknown))} (known: {', '.join(STAGES)})")
    wanted = lambda s: not only or s in only  # noqa: E731
    calibration = CalibrationSpec(source=args.calibration, samples=args.samples, seqlen=args.seqlen, seed=args.seed)
    rows: list[Row] = []
    unit: list[float] = []
    if not args.json:
        print(HEADER, flush=True)

    def measure(stage: str, fn, target: str = "", limit_s: float | None = None, limit_ratio: float | None = None,
                memory_budget_mib: float | None = None, child: bool = False):
        device = engine.loaded.device if engine else torch.device("cpu")
        _reset_peak(device)
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        if child:  # the stage ran in a child process: its own peak resident memory
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        else:
            peak = _peak_mib(device, baseline)
        ratio = seconds / unit[0] if unit else None
        checks = []
        if limit_s is not None:
            checks.append(seconds <= limit_s)
        if limit_ratio is not None and ratio is not None:
            checks.append(ratio <= limit_ratio)
        if memory_budget_mib is not None:
            checks.append(peak <= memory_budget_mib)
            target = f"{target}, <= {memory_budget_mib:.0f} MiB".lstrip(", ")
        rows.append(Row(stage, seconds, ratio, peak, target, all(checks) if checks else None))
        if not args.json:
            print(_format_row(rows[-1]), flush=True)
        return out

    engine: Engine | None = None
    if wanted("load-first") and args.model == "embedded":
        with tempfile.TemporaryDirectory() as empty:
            code = f"from workbench.model import load_model; load_model({args.model!r}, {args.device!r}, {args.dtype!r})"
            env = {**os.environ, "WORKBENCH_CACHE": empty}
            measure("load-first", lambda: subprocess.run([sys.executable, "-c", code], env=env, check=True),
                    "child process, empty cache", child=True)
    source = resolve_source(args.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    calibration_windows(tokenizer, calibration.source, calibration.samples, calibration.seqlen, calibration.seed)
    gc.collect()
    baseline = _rss_kib("VmRSS:")
    loaded = measure("load-cached", lambda: load_model(args.model, args.device, args.dtype), "<= 3 s", limit_s=3.0)
    loaded.tokenizer = tokenizer  # the tokenized calibration text is cached per tokenizer object
    engine = Engine(loaded, calibration)
    ids = engine.calibration_ids()
    weight_mib = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 2**20
    hidden = loaded.model.config.hidden_size
    activation_mib = 2 * ids.numel() * hidden * torch.finfo(loaded.dtype).bits / 8 / 2**20
    budget = 2.5 * weight_mib + activation_mib

    measure("forward", lambda: dense_forward(loaded.model, ids, loaded.device), "unit")
    unit.append(rows[-1].seconds)
    if wanted("capture"):
        measure("capture", lambda: capture(loaded.model, ids, loaded.device, ONE_PASS, hessian=False), "statistics only")
    half = Plan(method="wanda", sparsity=0.5)
    if wanted("wanda"):
        measure("wanda", lambda: engine.prune(half), "<= 2.2x, sequential", limit_ratio=2.2, memory_budget_mib=budget)
        engine.restore_dense()
    if wanted("wanda-one-pass"):
        engine.calibration.mode = ONE_PASS
        measure("wanda-one-pass", lambda: engine.prune(half), "<= 1.2x", limit_ratio=1.2, memory_budget_mib=budget)
        engine.calibration.mode = SEQUENTIAL
        engine.restore_dense()
    if wanted("sparsegpt"):
        measure("sparsegpt", lambda: engine.prune(Plan(method="sparsegpt", sparsity=0.5)), "<= 2.6x, sequential",
                limit_ratio=2.6, memory_budget_mib=budget)
        engine.restore_dense()
    if wanted("magnitude"):
        measure("magnitude", lambda: engine.prune(Plan(method="magnitude", sparsity=0.5)), "sequential capture too",
                memory_budget_mib=budget)
        engine.restore_dense()
    if wanted("reprune-linear") or wanted("reprune-block"):
        engine.prune(half)
        down = engine.linears[0][-1].name
        if wanted("reprune-linear"):
            plan = Plan(method="wanda", sparsity=0.5, linear_overrides={down: 0.6})
            measure("reprune-linear", lambda: engine.apply(plan), "<= 0.05 s", limit_s=0.05)
        if wanted("reprune-block"):
            plan = Plan(method="wanda", sparsity=0.5, block_overrides={1: 0.6})
            measure("reprune-block", lambda: engine.apply(plan), "<= 0.3 s", limit_s=0.3)
    if wanted("perplexity") or wanted("probe-suite"):
        engine.apply(half)  # probes time the pruned model; its dense references are measured first, untimed
        engine.probe(PROBES.names() if wanted("probe-suite") else ["perplexity"])
    if wanted("perplexity"):
        measure("perplexity", lambda: engine.probe(["perplexity"]), "quick, Wanda 50%")
    if wanted("probe-suite"):
        names = PROBES.names()
        measure("probe-suite", lambda: engine.probe(names), f"<= 15 s, {len(names)} probes", limit_s=15.0)

    meta = {"model": args.model, "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", ""),
            "calibration_tokens": ids.numel(), "threads": torch.get_num_threads(),
            "dense_weight_mib": round(weight_mib, 1), "memory_budget_mib": round(budget, 1)}
    if args.json:
        print(json.dumps({"meta": meta, "stages": [r.__dict__ for r in rows]}, indent=2))
    else:
        print(f"{meta['model']} on {meta['device']} ({meta['dtype']}, {meta['threads']} threads), "
              f"{meta['calibration_tokens']} calibration tokens; dense weights {weight_mib:.0f} MiB, memory budget {budget:.0f} MiB")
        print(json.dumps({"meta": meta, "stages": [r.__dict__ for r in rows]}))
    return 0 if all(r.ok is not False for r in rows) else 1
