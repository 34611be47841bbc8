"""`workbench bench`: wall time and peak memory of every stage, as a table and as JSON.

Stages: model load (first, from an empty cache, and cached), one dense forward pass over the calibration
tokens (the unit every other time is divided by), calibration capture, each method's full prune at 50%
(sequential; Wanda also one-pass), re-pruning one linear and one block from cached statistics (the
median of 5 edits, back and forth), the dense reference probes (the pruned weights swapped for the dense
ones), the perplexity probe, the kl probe (against the dense top-k kept once per engine), the quick
probe suite, the efficiency probe alone (generation speed; 2:4 sparse kernels on a GPU), a sensitivity scan of every block, LayerIF's influence scores, and a
comparison of every allocator with Wanda at 70% (quick probes and the dense reference included) and the
paired bootstrap of all its intervals; healing (LoRA, with checkpointing, sparse fine-tuning; see
`workbench.cli.bench_heal`); the quick reasoning probe and self-generated calibration (see
`workbench.cli.bench_reasoning`). The probe suite is the app's default one (without the opt-in reasoning).
Targets are ratios to the run's own dense forward pass (`x fwd`) or to another stage of the same run,
so a slower machine of the same kind does not fail them; the load, re-prune and influence targets stay
absolute. The comparison's target is the issue's 4 x (one sequential prune + one quick probe suite) + one dense suite
per four variants, which counts no allocator's own work before its prune: OWL's dense statistics,
LayerIF's scores (cached from the stage before) and the agent's search (a loop that prunes and measures
dozens of times by design) are reported in the row and left out of that check. The first load runs in a
child process with an empty cache (its time includes starting Python). On a random model (`random:...`)
every probe runs for its time only. `--sizes` sweeps several models instead (see `workbench.cli.sweep`).

Memory: before each stage, garbage is collected, freed heap is handed back to the OS and the peak
resident set (Linux VmHWM) is reset, so a stage starts from what is alive (the model, the engine's dense
weights and cached statistics), not from what earlier stages freed. "start" is the resident set then
and "peak" the stage's peak, both minus the resident set once the libraries are imported and the
calibration text is tokenized, before the weights are loaded; on CUDA, peak is torch's peak allocated
device memory. Budgets:

- prune stages: 2.5x the dense weight bytes plus one block's calibration activations (the hidden
  states entering and leaving it).
- probe stages: the weights as the engine holds them (the checkpoint's weights plus the private copy of
  every linear that pruning writes; the dense references run on the kept dense weights, no copy) plus
  the largest probe working set, perplexity's: a batch's logits three times (the logits, their shifted
  copy and the log-softmax of cross-entropy), plus half the dense weight bytes for everything smaller
  (the probes' hidden states and key/value caches, the allocator's slack), as the prune budget allows.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from workbench.allocators import ALLOCATORS
from workbench.cli.bench_heal import STAGES as HEAL_STAGES, run_heal_stages
from workbench.cli.bench_reasoning import STAGES as REASONING_STAGES, run_reasoning_stages
from workbench.domain.plan import ONE_PASS, SEQUENTIAL, CalibrationSpec, Plan
from workbench.domain.signals import DEFAULT_SIGNAL
from workbench.engine.capture import capture, dense_forward
from workbench.engine.facade import Engine
from workbench.infra.errors import WorkbenchError
from workbench.infra.memory import settle, status_kib
from workbench.model.data import calibration_windows
from workbench.model.loader import EMBEDDED, load_model, load_tokenizer, resolve_device, resolve_dtype, resolve_source
from workbench.model.shapes import random_weights_of
from workbench.probes import default_probes, timing_only
from workbench.probes import heldout
from workbench.studies.compare import grid, run_comparison
from workbench.studies.sensitivity import scan

STAGES = ("load-first", "load-cached", "forward", "capture", "wanda", "wanda-one-pass", "sparsegpt", "magnitude",
          "reprune-linear", "reprune-block", "probe-dense", "perplexity", "kl", "probe-suite", "efficiency", "sensitivity",
          "influence", "compare", "bootstrap", *HEAL_STAGES, *REASONING_STAGES)


def add_bench_parser(sub) -> None:
    """The `workbench bench` subcommand."""
    from workbench.cli.args import add_model_command

    p = add_model_command(sub, "bench", help="time and memory of load, calibration, each method, re-pruning and probes")
    p.add_argument("--only", default="", help="comma-separated stages to run (default: all; with --sizes: the sweep's)")
    p.add_argument("--offload", action="store_true", help="keep the weights on the CPU (memory-mapped), one block at a time on the device")
    p.add_argument("--sizes", default="", help="sweep these model specs (comma-separated), e.g. embedded,random:llama-1b")
    p.add_argument("--sweep-samples", default="", metavar="N,N", help="with --sizes: calibration sample counts to sweep (default: --samples)")
    p.add_argument("--plot", metavar="FILE", help="with --sizes: a picture of the cost curves (.png or .svg)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_bench)


@dataclass
class Row:
    stage: str
    seconds: float
    ratio: float | None
    start_mib: float
    peak_mib: float
    target: str
    ok: bool | None


def _start(device: torch.device) -> int:
    """Settle memory before a stage (see `workbench.infra.memory.settle`); the resident set in KiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    return settle()


def _peak_mib(device: torch.device, baseline_kib: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (status_kib("VmHWM") - baseline_kib) / 1024


EDITS = 5  # re-prune stages: timed edits, back and forth, whose median is the stage's time


def _edits(engine: Engine, edited: Plan, base: Plan) -> list[float]:
    """Seconds of each of EDITS incremental re-prunes, from `base` to `edited` and back, alternately (one
    edit of about 20 ms is at the mercy of the machine's noise)."""
    seconds = []
    for i in range(EDITS):
        start = time.perf_counter()
        engine.apply(edited if i % 2 == 0 else base)
        seconds.append(time.perf_counter() - start)
    return seconds


def _prepare_seconds(comparison) -> float:
    """Seconds the comparison's allocators spent on their own scoring or search before their prunes."""
    return sum(r.prepare_seconds for r in comparison.results)


def probe_activation_mib(vocab_size: int, dtype: torch.dtype) -> float:
    """Perplexity's working set: one batch's logits, their shifted copy and their log-softmax."""
    logits = heldout.BATCH * heldout.SEQLEN * vocab_size * max(torch.finfo(dtype).bits, 32) / 8
    return 3 * logits / 2**20


HEADER = f"{'stage':<16} {'seconds':>8} {'x fwd':>6} {'start MiB':>9} {'peak MiB':>9}  {'target':<40} ok"


def _format_row(r: Row) -> str:
    ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
    ok = "" if r.ok is None else ("yes" if r.ok else "NO")
    return f"{r.stage:<16} {r.seconds:>8.3f} {ratio:>6} {r.start_mib:>9.0f} {r.peak_mib:>9.0f}  {r.target:<40} {ok}"


# Sequential prunes as multiples of the dense forward pass. A mixture of experts' forward pass runs only the
# routed experts (8 of 32 per token in Granite-MoE 1B-A400M) while pruning touches every expert.
DENSE_LIMITS = {"wanda": 2.2, "sparsegpt": 2.6}
MOE_LIMITS = {"wanda": 4.0, "sparsegpt": 6.0}


def run_bench(args) -> int:
    """Run the selected stages on `args.model` and print the table (or JSON with --json); sweep with --sizes."""
    if args.sizes:
        from workbench.cli.sweep import run_sweep

        return run_sweep(args)
    if args.plot or args.sweep_samples:
        raise WorkbenchError("--plot" if args.plot else "--sweep-samples", "needs --sizes")
    with timing_only():  # on random weights the probes' times are real, their scores are not reported
        return _bench(args)


def _bench(args) -> int:
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
                memory_budget_mib: float | None = None, child: bool = False, excluded=None, timed=None):
        """Time `fn` and check its limits; `excluded(out)`: seconds of it the time limit does not count;
        `timed(out)`: the stage's seconds, from what `fn` timed itself, instead of its wall time."""
        device = engine.loaded.device if engine else torch.device("cpu")
        resident = _start(device)
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start if timed is None else timed(out)
        counted = seconds - (excluded(out) if excluded else 0.0)
        if child:  # the stage ran in a child process: its own peak resident memory
            start_mib, peak = 0.0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        else:
            start_mib, peak = (resident - baseline) / 1024, _peak_mib(device, baseline)
        ratio = seconds / unit[0] if unit else None
        checks = []
        if limit_s is not None:
            checks.append(counted <= limit_s)
        if excluded:
            target = f"{target}: {counted:.0f} s"
        if limit_ratio is not None and ratio is not None:
            checks.append(ratio <= limit_ratio)
        if callable(memory_budget_mib):  # a budget on top of what is alive when the stage starts
            memory_budget_mib = memory_budget_mib(start_mib)
        if memory_budget_mib is not None:
            checks.append(peak <= memory_budget_mib)
            target = f"{target}, <= {memory_budget_mib:.0f} MiB".lstrip(", ")
        rows.append(Row(stage, seconds, ratio, start_mib, peak, target, all(checks) if checks else None))
        if not args.json:
            print(_format_row(rows[-1]), flush=True)
        return out

    engine: Engine | None = None
    if wanted("load-first") and args.model == EMBEDDED:
        with tempfile.TemporaryDirectory() as empty:
            code = f"from workbench.model.loader import load_model; load_model({args.model!r}, {args.device!r}, {args.dtype!r})"
            env = {**os.environ, "WORKBENCH_CACHE": empty}
            measure("load-first", lambda: subprocess.run([sys.executable, "-c", code], env=env, check=True),
                    "child process, empty cache", child=True)
    source = resolve_source(args.model, dtype=resolve_dtype(args.dtype, resolve_device(args.device)))
    tokenizer = load_tokenizer(source)
    calibration_windows(tokenizer, calibration.source, calibration.samples, calibration.seqlen, calibration.seed)
    baseline = settle()
    loaded = measure("load-cached", lambda: load_model(args.model, args.device, args.dtype, offload=args.offload or None),
                     "<= 3 s", limit_s=3.0)
    loaded.tokenizer = tokenizer  # the tokenized calibration text is cached per tokenizer object
    engine = Engine(loaded, calibration)
    ids = engine.calibration_ids()
    weight_mib = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 2**20
    hidden = loaded.model.config.hidden_size
    activation_mib = 2 * ids.numel() * hidden * torch.finfo(loaded.dtype).bits / 8 / 2**20
    budget = 2.5 * weight_mib + activation_mib
    linear_mib = sum(r.numel * r.module.weight.element_size() for r in engine.refs.values()) / 2**20
    probe_budget = (weight_mib + linear_mib + probe_activation_mib(loaded.model.config.vocab_size, loaded.dtype)
                    + 0.5 * weight_mib)

    measure("forward", lambda: dense_forward(loaded.model, ids, loaded.device), "unit")
    experts = any(r.expert is not None for block in engine.linears for r in block)
    limits = MOE_LIMITS if experts else DENSE_LIMITS
    unit.append(rows[-1].seconds)
    if wanted("capture"):
        measure("capture", lambda: capture(loaded.model, ids, loaded.device, ONE_PASS, hessian=False), "statistics only")
    half = Plan(method="wanda", sparsity=0.5)
    if wanted("wanda"):
        measure("wanda", lambda: engine.prune(half), f"<= {limits['wanda']}x, sequential", limit_ratio=limits["wanda"],
                memory_budget_mib=budget)
        engine.restore_dense()
    if wanted("wanda-one-pass"):
        engine.calibration.mode = ONE_PASS
        measure("wanda-one-pass", lambda: engine.prune(half), "<= 1.2x", limit_ratio=1.2, memory_budget_mib=budget)
        engine.calibration.mode = SEQUENTIAL
        engine.restore_dense()
    if wanted("sparsegpt"):
        measure("sparsegpt", lambda: engine.prune(Plan(method="sparsegpt", sparsity=0.5)),
                f"<= {limits['sparsegpt']}x, sequential", limit_ratio=limits["sparsegpt"], memory_budget_mib=budget)
        engine.restore_dense()
    if wanted("magnitude"):
        measure("magnitude", lambda: engine.prune(Plan(method="magnitude", sparsity=0.5)), "sequential capture too",
                memory_budget_mib=budget)
        engine.restore_dense()
    if wanted("reprune-linear") or wanted("reprune-block"):
        engine.apply(half)  # from the statistics the prune stages cached (a full prune only when none ran)
        down = engine.linears[0][-1].name
        if wanted("reprune-linear"):
            plan = Plan(method="wanda", sparsity=0.5, linear_overrides={down: 0.6})
            measure("reprune-linear", lambda: _edits(engine, plan, half), f"<= 0.05 s, median of {EDITS} edits",
                    limit_s=0.05, timed=statistics.median)
        if wanted("reprune-block"):
            plan = Plan(method="wanda", sparsity=0.5, block_overrides={1: 0.6})
            measure("reprune-block", lambda: _edits(engine, plan, half), f"<= 0.3 s, median of {EDITS} edits",
                    limit_s=0.3, timed=statistics.median)
    if wanted("probe-dense") or wanted("perplexity") or wanted("probe-suite"):
        engine.apply(half)  # probes time the pruned model; its dense references are measured first
        names = default_probes() if wanted("probe-dense") or wanted("probe-suite") else ["perplexity"]
        if wanted("probe-dense"):
            measure("probe-dense", lambda: engine.probe(names), f"dense refs + pruned, {len(names)} probes",
                    memory_budget_mib=probe_budget)
        else:
            engine.probe(names)
    if wanted("perplexity"):
        measure("perplexity", lambda: engine.probe(["perplexity"]), "quick, Wanda 50%", memory_budget_mib=probe_budget)
    if wanted("kl") and wanted("perplexity"):
        engine.dense_reference(["kl"])  # the dense top-k store, once per engine
        limit = 1.5 * rows[-1].seconds
        measure("kl", lambda: engine.probe(["kl"]), f"<= 1.5 x perplexity = {limit:.2f} s", limit_s=limit,
                memory_budget_mib=probe_budget)
    if wanted("probe-suite"):
        names = default_probes()
        measure("probe-suite", lambda: engine.probe(names), f"<= 0.6x, {len(names)} probes", limit_ratio=0.6,
                memory_budget_mib=probe_budget)

    efficiency = None
    if wanted("efficiency"):
        engine.apply(half)
        engine.dense_reference(["efficiency"])
        efficiency = measure("efficiency", lambda: engine.probe(["efficiency"]), "generation speed, Wanda 50%",
                             memory_budget_mib=probe_budget)[0].details

    run_heal_stages(engine, measure, wanted)
    run_reasoning_stages(engine, measure, wanted, probe_budget)
    if wanted("sensitivity"):
        engine.apply(half)
        measure("sensitivity", lambda: scan(engine, half, step=0.1), f"<= 2.0x, {len(engine.linears)} blocks +10%, quick {DEFAULT_SIGNAL}",
                limit_ratio=2.0, memory_budget_mib=probe_budget)
    if wanted("influence"):
        layerif = Plan(method="wanda", allocator="layerif", sparsity=0.7)
        measure("influence", lambda: engine.prepare(layerif), "<= 120 s, LayerIF scores (defaults)", limit_s=120.0,
                memory_budget_mib=probe_budget)
    if wanted("compare"):
        variants = grid(["wanda"], ALLOCATORS.names(), 0.7)
        seconds = {r.stage: r.seconds for r in rows}
        limit = None
        if {"wanda", "probe-suite", "probe-dense"} <= set(seconds):
            dense_suite = seconds["probe-dense"] - seconds["probe-suite"]  # that stage ran dense refs + pruned
            limit = len(variants) * (seconds["wanda"] + seconds["probe-suite"]) + dense_suite
        engine.restore_dense()
        engine.dense_probes.clear()  # the comparison measures its dense reference itself
        target = (f"<= {len(variants)} x (wanda + suite) + dense suite = {limit:.0f} s, allocators' own work apart" if limit
                  else "limit needs the wanda and probe stages")
        comparison = measure("compare", lambda: run_comparison(engine, variants, default_probes()),
                             f"{len(variants)} allocators at 70%, {target}", limit_s=limit,
                             memory_budget_mib=probe_budget, excluded=_prepare_seconds)
        measure("bootstrap", comparison.rows, "<= 1 s, every interval of the comparison", limit_s=1.0)

    meta = {"model": args.model, "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", ""),
            "calibration_tokens": ids.numel(), "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in loaded.model.parameters()), "random_weights": bool(random_weights_of(loaded.model)),
            "dense_weight_mib": round(weight_mib, 1), "memory_budget_mib": round(budget, 1),
            "probe_memory_budget_mib": round(probe_budget, 1)}
    if torch.cuda.is_available() and loaded.device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(loaded.device)
    if loaded.device_weights is not None:
        meta["offload_device_weights_peak_mib"] = round(loaded.device_weights.peak / 2**20, 1)
    if efficiency is not None:
        meta["efficiency"] = {k: efficiency[k] for k in ("tokens_per_second", "sparse_2to4") if k in efficiency}
    if args.json:
        print(json.dumps({"meta": meta, "stages": [r.__dict__ for r in rows]}, indent=2))
    else:
        print(f"{meta['model']} on {meta['device']} ({meta['dtype']}, {meta['threads']} threads), "
              f"{meta['calibration_tokens']} calibration tokens; dense weights {weight_mib:.0f} MiB, memory budget "
              f"{budget:.0f} MiB (prune), {probe_budget:.0f} MiB (probes)")
        print(json.dumps({"meta": meta, "stages": [r.__dict__ for r in rows]}))
    return 0 if all(r.ok is not False for r in rows) else 1
