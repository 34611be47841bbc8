"""The pruning engine shared by the app, the CLI and session replay. It never imports textual.

Invariant: every linear's weight is `method.prune(dense, stats, target, pattern)` for the assignment
recorded for it, computed from the dense weight kept aside and the committed calibration statistics
(or the dense weight itself). Re-pruning is therefore idempotent and free of cumulative damage, and a
session (calibration spec + the plan of the last full prune + the current plan) replays exactly.

- `prune(plan)`: full calibration-aware prune; re-captures statistics (sequential or one-pass). On
  cancel, every touched linear is put back as it was before the call.
- `apply(plan)`: incremental; re-prunes from cached statistics only the linears whose target, method
  or pattern changed. Cancellable between linears; each linear is replaced in one step.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.serialization import config as serialization_config

from workbench.allocators import ALLOCATORS, MAX_SPARSITY, AllocationContext
from workbench.capture import MODES, ONE_PASS, SEQUENTIAL, BlockStats, capture, release_freed_memory
from workbench.data import calibration_windows
from workbench.errors import Cancelled, WorkbenchError
from workbench.memory import configure_allocator
from workbench.masks import MaskFingerprint, StoredMask, fingerprint, keep_mask, save_mask_file
from workbench.methods import METHODS, LinearStats, Method, Pattern, Pruned, parse_pattern
from workbench.model import INPUT_GROUPS, Loaded, LinearRef, find_linears, load_model
from workbench.probes import ProbeContext, ProbeResult, run_probes
from workbench.stats import (
    DEFAULT_M,
    WeightSummary,
    activation_norm,
    outlier_count,
    pool_weight_summaries,
    reconstruction_terms,
    relative_error,
    wanda_score_sum,
    weight_summary,
)

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]

_LEADER = {kind: group[0] for group in INPUT_GROUPS for kind in group}


def _prune_units(refs: list[LinearRef], method: Method) -> list[list[LinearRef]]:
    """What is pruned (and cancellable) as one: for a method with `prune_group`, the consecutive linears
    of `refs` that read the same input (same block, same group leader); otherwise one linear each."""
    if method.prune_group is None:
        return [[r] for r in refs]
    return [list(g) for _, g in itertools.groupby(refs, key=lambda r: (r.block, _LEADER[r.kind]))]


@dataclass
class CalibrationSpec:
    """Where calibration statistics come from. `hessian=None` captures X X^T only for methods that need
    it; True also gives reconstruction errors for the others."""

    source: str = "embedded"
    samples: int = 32
    seqlen: int = 256
    seed: int = 0
    mode: str = SEQUENTIAL
    hessian: bool | None = None


@dataclass
class Plan:
    """What the user asked for: method, allocator, global target, N:M pattern, manual overrides."""

    method: str = "wanda"
    method_params: dict = field(default_factory=dict)
    allocator: str = "uniform"
    allocator_params: dict = field(default_factory=dict)
    sparsity: float = 0.5
    pattern: str | None = None
    block_overrides: dict[int, float] = field(default_factory=dict)
    linear_overrides: dict[str, float] = field(default_factory=dict)


@dataclass
class WeightStatistics:
    """What a linear and a block report alike. |W| statistics are of the dense weight; `None` means
    not measured."""

    numel: int
    target: float
    achieved: float
    w_mean_abs: float
    w_std: float
    w_max_abs: float
    kurtosis: float
    outlier_ratio: float | None
    act_norm: float | None
    recon_error: float | None


@dataclass
class LinearState(WeightStatistics):
    """One linear as plain data."""

    name: str
    block: int
    kind: str
    shape: tuple[int, int]
    method: str | None
    act_norm_max: float | None


@dataclass
class BlockState(WeightStatistics):
    """One block: pooled statistics of its seven linears."""

    index: int
    linears: list[LinearState]


@dataclass
class EngineState:
    """Everything the app, the CLI and sessions show about the model."""

    model: str
    plan: Plan | None
    target: float
    achieved: float
    params_total: int
    params_nonzero: int
    calibrated: bool
    blocks: list[BlockState]


@dataclass
class Report:
    """Outcome of prune/apply."""

    seconds: float
    linears_pruned: int


@dataclass(frozen=True)
class _Assignment:
    method: str
    params: tuple
    target: float
    pattern: str | None


def _check_fraction(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WorkbenchError(where, f"must be a number, got {type(value).__name__}")
    if not 0 <= value < 1:
        raise WorkbenchError(where, f"sparsity must be in [0, 1), got {value}")
    if value > MAX_SPARSITY:
        raise WorkbenchError(where, f"sparsity above {MAX_SPARSITY} leaves a linear almost empty, got {value}")
    return float(value)


class Engine:
    """A loaded model, its dense weights, cached calibration statistics, and the current pruning."""

    def __init__(self, loaded: Loaded, calibration: CalibrationSpec | None = None):
        configure_allocator()  # before the copies below: large tensors mapped, freed back to the OS
        self.loaded = loaded
        self.calibration = calibration or CalibrationSpec()
        if self.calibration.mode not in MODES:
            raise WorkbenchError("calibration.mode", f"unknown mode {self.calibration.mode!r} (use {', '.join(MODES)})")
        self.linears: list[list[LinearRef]] = find_linears(loaded.model)
        self.refs: dict[str, LinearRef] = {r.name: r for block in self.linears for r in block}
        self._dense: dict[str, torch.Tensor] = {}
        for name, ref in self.refs.items():
            param = ref.module.weight
            if param.device.type == "cpu":
                # The dense weight stays where it was loaded (often a mapping of the checkpoint file) and
                # the module gets a private copy that pruning writes in place: copied now, in one go, the
                # copies lie together and pruning pays no copy-on-write fault per 4 KiB of the mapping.
                self._dense[name] = param.detach()
                param.data = param.detach().clone()
            else:
                self._dense[name] = param.detach().to("cpu")
        self._summaries: dict[str, WeightSummary] = {}
        self._stats: list[BlockStats] | None = None
        self._dense_stats: list[BlockStats] | None = None
        self._assigned: dict[str, _Assignment] = {}
        self._achieved: dict[str, float] = {}
        self._recon: dict[str, tuple[float, float]] = {}
        self._outliers: dict[tuple, tuple[list[float], dict[str, float]]] = {}
        self._ids: torch.Tensor | None = None
        self._hessian_files: dict[int, tuple[BlockStats, Path]] = {}
        self._loaded_hessians: tuple[BlockStats | None, dict] = (None, {})
        self._spill_dir: Path | None = None
        self._spill_count = 0
        self._lock = threading.RLock()
        self.plan: Plan | None = None
        self.calibrated_with: Plan | None = None
        self.dense_probes: dict[str, ProbeResult] = {}

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str = "embedded", device: str = "auto", dtype: str = "auto",
             calibration: CalibrationSpec | None = None, progress: Progress | None = None,
             offload: bool | None = None) -> "Engine":
        """Load a model spec (see `workbench.model.load_model`) into a new engine."""
        return cls(load_model(model, device=device, dtype=dtype, offload=offload, progress=progress), calibration)

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer, calibration: CalibrationSpec | None = None,
                   spec: str = "in-memory") -> "Engine":
        """Wrap an already built model (tests use `workbench.model.tiny_llama`)."""
        param = next(model.parameters())
        loaded = Loaded(model=model, tokenizer=tokenizer, spec=spec, device=param.device, dtype=param.dtype, offload=False)
        return cls(loaded, calibration)

    # ----- plans and allocation -----------------------------------------------------------------
    def block_numels(self) -> list[int]:
        """Parameters in the linears of each block."""
        return [sum(r.numel for r in block) for block in self.linears]

    def check_plan(self, plan: Plan) -> Method:
        """Refuse an invalid plan with a one-line error naming the key; return its method."""
        method = METHODS.get(plan.method, where="method")
        method.params(plan.method_params, where="method_params")
        ALLOCATORS.get(plan.allocator, where="allocator").params(plan.allocator_params, where="allocator_params")
        _check_fraction(plan.sparsity, "sparsity")
        pattern = parse_pattern(plan.pattern)
        if pattern is not None and (plan.block_overrides or plan.linear_overrides):
            raise WorkbenchError("overrides", f"per-block and per-linear targets do not apply with pattern {pattern}")
        for block, value in plan.block_overrides.items():
            if not isinstance(block, int) or not 0 <= block < len(self.linears):
                raise WorkbenchError(f"overrides.blocks.{block}", f"no such block (the model has blocks 0..{len(self.linears) - 1})")
            _check_fraction(value, f"overrides.blocks.{block}")
        for name, value in plan.linear_overrides.items():
            if name not in self.refs:
                raise WorkbenchError(f"overrides.linears.{name}", "no such linear (names look like layers.3.mlp.down_proj)")
            _check_fraction(value, f"overrides.linears.{name}")
        if self.calibration.hessian is False and method.needs_hessian:
            raise WorkbenchError("calibration.hessian", f"method {method.name} needs the Hessian; set hessian = true or leave it unset")
        return method

    def allocate(self, plan: Plan) -> dict[str, float]:
        """Per-linear target sparsity for `plan` (allocator, then block and linear overrides)."""
        self.check_plan(plan)
        pattern = parse_pattern(plan.pattern)
        if pattern is not None:
            return {name: pattern.sparsity for name in self.refs}
        allocator = ALLOCATORS.get(plan.allocator)
        ctx = AllocationContext(block_numels=self.block_numels(), outlier_ratios=lambda M: self.outlier_ratios(M, dense=True)[0])
        per_block = allocator.allocate(ctx, plan.sparsity, **allocator.params(plan.allocator_params))
        for block, value in plan.block_overrides.items():
            per_block[block] = value
        targets = {ref.name: per_block[ref.block] for ref in self.refs.values()}
        targets.update(plan.linear_overrides)
        return targets

    def block_targets(self, plan: Plan) -> list[float]:
        """Parameter-weighted target of each block under `plan`."""
        targets = self.allocate(plan)
        return [sum(targets[r.name] * r.numel for r in block) / sum(r.numel for r in block) for block in self.linears]

    def _assignment(self, method: Method, params: dict, target: float, pattern: Pattern | None) -> _Assignment:
        return _Assignment(method.name, tuple(sorted(params.items())), round(target, 9), str(pattern) if pattern else None)

    # ----- statistics ---------------------------------------------------------------------------
    def calibration_ids(self) -> torch.Tensor:
        """The calibration token windows (computed once)."""
        if self._ids is None:
            c = self.calibration
            self._ids = calibration_windows(self.loaded.tokenizer, c.source, c.samples, c.seqlen, c.seed)
        return self._ids

    def _stats_for(self, ref: LinearRef, block_stats: BlockStats) -> LinearStats:
        """A linear's statistics, with its block's Hessian read back from disk if it was spilled."""
        stats = block_stats[_LEADER[ref.kind]]
        entry = self._hessian_files.get(id(block_stats))
        if entry is None:
            return stats
        if self._loaded_hessians[0] is not block_stats:
            self._loaded_hessians = (block_stats, torch.load(entry[1], map_location="cpu"))
        return LinearStats(stats.sq_norm, stats.tokens, self._loaded_hessians[1][_LEADER[ref.kind]])

    def _has_hessian(self, stats: list[BlockStats] | None) -> bool:
        return bool(stats) and (id(stats[0]) in self._hessian_files or stats[0]["q"].hessian is not None)

    def _spill_hessians(self, block_stats: BlockStats) -> None:
        """Move one block's Hessians to a file, keeping only the channel norms in memory: all blocks'
        Hessians together are as large as the model's linears (several GiB for an 8B model)."""
        if block_stats["q"].hessian is None:
            return
        if self._spill_dir is None:
            self._spill_dir = Path(tempfile.mkdtemp(prefix="workbench-hessians-"))
            weakref.finalize(self, shutil.rmtree, self._spill_dir, True)
        self._spill_count += 1
        path = self._spill_dir / f"block-{self._spill_count}.pt"
        with serialization_config.patch({"save.compute_crc32": False}):  # a scratch file: no checksum (it doubled the write time)
            torch.save({leader: s.hessian for leader, s in block_stats.items()}, path)
        for leader, s in list(block_stats.items()):
            block_stats[leader] = LinearStats(s.sq_norm, s.tokens)
        self._hessian_files[id(block_stats)] = (block_stats, path)

    def _forget_unused_hessians(self) -> None:
        """Delete spilled Hessians of statistics that are no longer committed."""
        keep = {id(b) for b in (self._stats or [])}
        for key in [k for k in self._hessian_files if k not in keep]:
            self._hessian_files.pop(key)[1].unlink(missing_ok=True)
        self._loaded_hessians = (None, {})

    def _dense_statistics(self, progress: Progress | None, cancel: Cancel | None) -> list[BlockStats]:
        """Statistics of the dense model (for OWL); pruned blocks are swapped to dense while they run."""
        if self._dense_stats is None:
            stash: dict[str, torch.Tensor] = {}

            def to_dense(i: int) -> None:
                for ref in self.linears[i]:
                    if ref.name in self._assigned:
                        stash[ref.name] = ref.module.weight.detach().clone()
                        self._put(ref, self._dense[ref.name])

            def back(i: int, _stats) -> None:
                for ref in self.linears[i]:
                    if ref.name in stash:
                        self._put(ref, stash.pop(ref.name))

            try:
                self._dense_stats = capture(self.loaded.model, self.calibration_ids(), self.loaded.device, ONE_PASS,
                                            hessian=False, before_block=to_dense, on_block=back,
                                            progress=progress, cancel=cancel)
            finally:
                for name, weight in stash.items():
                    self._put(self.refs[name], weight)
        return self._dense_stats

    def calibrate(self, progress: Progress | None = None, cancel: Cancel | None = None) -> None:
        """Capture statistics of the dense model without pruning (for `workbench stats`)."""
        with self._lock:
            stats = self._dense_statistics(progress, cancel)
            if self._stats is None:
                self._stats = stats

    def outlier_ratios(self, M: float = DEFAULT_M, dense: bool = False) -> tuple[list[float], dict[str, float]]:
        """OWL outlier ratios of the dense weights: per block (scores pooled over its linears) and per
        linear, from the dense model's statistics (`dense=True`) or the cached calibration statistics."""
        stats = self._dense_statistics(None, None) if dense else self._stats
        if stats is None:
            raise WorkbenchError("outlier ratio", "no calibration statistics yet: prune or calibrate first")
        key = (M, id(stats))
        if key not in self._outliers:
            per_block, per_linear = [], {}
            for block, block_stats in zip(self.linears, stats):
                dense = {r.name: self._dense[r.name].to(torch.float32) for r in block}
                total = sum(wanda_score_sum(dense[r.name], self._stats_for(r, block_stats)) for r in block)
                numel = sum(r.numel for r in block)
                threshold = M * total / numel
                count = 0
                for r in block:
                    s = self._stats_for(r, block_stats)
                    count += outlier_count(dense[r.name], s, threshold)
                    own = M * wanda_score_sum(dense[r.name], s) / r.numel
                    per_linear[r.name] = outlier_count(dense[r.name], s, own) / r.numel
                per_block.append(count / numel)
            self._outliers = {k: v for k, v in self._outliers.items() if k[1] in (id(self._stats), id(self._dense_stats))}
            self._outliers[key] = (per_block, per_linear)
        return self._outliers[key]

    # ----- pruning ------------------------------------------------------------------------------
    def _put(self, ref: LinearRef, weight: torch.Tensor) -> None:
        """Write `weight` into the linear's own weight, in place."""
        ref.module.weight.data.copy_(weight)

    def _prune_linear(self, ref: LinearRef, stats: LinearStats | None, method: Method, params: dict,
                      target: float, pattern: Pattern | None) -> None:
        """Re-prune one linear from its dense weight and record what it now holds."""
        self._prune_group([ref], stats, method, params, {ref.name: target}, pattern)

    def _prune_group(self, refs: list[LinearRef], stats: LinearStats | None, method: Method, params: dict,
                     targets: dict[str, float], pattern: Pattern | None) -> None:
        """Re-prune linears that read the same input (`stats`) from their dense weights, in one pass when
        the method can (SparseGPT: one column loop for q, k and v), and record what each now holds."""
        denses = [self._dense[r.name].to(self.loaded.device, torch.float32) for r in refs]
        results = [Pruned(dense, 0.0) for dense in denses]  # a linear with no target stays dense
        todo = [n for n, r in enumerate(refs) if pattern is not None or targets[r.name] > 0]
        if todo and method.prune_group is not None:
            out = method.prune_group([denses[n] for n in todo], stats, [targets[refs[n].name] for n in todo], pattern, **params)
        else:
            out = [Pruned(method.prune(denses[n], stats, targets[refs[n].name], pattern, **params)) for n in todo]
        for n, result in zip(todo, out):
            results[n] = result
        for ref, dense, (weight, output_error) in zip(refs, denses, results):
            self._put(ref, weight)
            self._assigned[ref.name] = self._assignment(method, params, targets[ref.name], pattern)
            self._achieved[ref.name] = (weight == 0).sum().item() / ref.numel
            if stats is not None and stats.hessian is not None:
                self._recon[ref.name] = reconstruction_terms(dense, weight, stats.hessian, output_error)
            else:
                self._recon.pop(ref.name, None)

    def _restore(self, names, stats: list[BlockStats] | None, assigned: dict[str, _Assignment]) -> None:
        """Put linears back to a recorded state (assignment + statistics), or dense if they had none."""
        for name in names:
            ref = self.refs[name]
            a = assigned.get(name)
            if a is None or stats is None:
                self._put(ref, self._dense[name])
                self._assigned.pop(name, None)
                self._achieved.pop(name, None)
                self._recon.pop(name, None)
            else:
                method = METHODS.get(a.method)
                self._prune_linear(ref, self._stats_for(ref, stats[ref.block]), method, dict(a.params), a.target,
                                   parse_pattern(a.pattern))

    def prune(self, plan: Plan, progress: Progress | None = None, cancel: Cancel | None = None) -> Report:
        """Full calibration-aware prune: capture statistics block by block (sequential: from the blocks
        before, as pruned; one-pass: from the dense model) and prune each block as its statistics land."""
        with self._lock:
            start = time.perf_counter()
            method = self.check_plan(plan)
            params = method.params(plan.method_params)
            pattern = parse_pattern(plan.pattern)
            hessian = method.needs_hessian or bool(self.calibration.hessian)
            targets = self.allocate(plan)
            old_stats, old_assigned = self._stats, dict(self._assigned)
            touched: list[str] = []

            def to_dense(i: int) -> None:
                for ref in self.linears[i]:
                    if ref.name in self._assigned:
                        touched.append(ref.name)
                        self._put(ref, self._dense[ref.name])

            def prune_block(i: int, block_stats: BlockStats) -> None:
                for group in _prune_units(self.linears[i], method):
                    if cancel is not None and cancel():
                        raise Cancelled()
                    touched.extend(r.name for r in group)
                    self._prune_group(group, self._stats_for(group[0], block_stats), method, params, targets, pattern)
                self._spill_hessians(block_stats)

            try:
                stats = capture(self.loaded.model, self.calibration_ids(), self.loaded.device, self.calibration.mode,
                                hessian, before_block=to_dense, on_block=prune_block, progress=progress, cancel=cancel)
            except BaseException:
                self._restore(dict.fromkeys(touched), old_stats, old_assigned)
                self._forget_unused_hessians()
                raise
            self._stats = stats
            self._forget_unused_hessians()
            if self.calibration.mode == ONE_PASS:
                self._dense_stats = stats
            self.plan = plan
            self.calibrated_with = plan
            return Report(seconds=time.perf_counter() - start, linears_pruned=len(self.refs))

    def needs_full_prune(self, plan: Plan) -> bool:
        """Whether `apply(plan)` must run a full `prune`: no statistics cached yet, or the plan's method
        needs a Hessian that was not captured."""
        stats = self._stats
        if stats is None or self.calibrated_with is None:
            return True
        return METHODS.get(plan.method).needs_hessian and not self._has_hessian(stats)

    def apply(self, plan: Plan, progress: Progress | None = None, cancel: Cancel | None = None) -> Report:
        """Incremental prune from cached statistics: only linears whose assignment changed are redone.
        Falls back to a full `prune` when there are no statistics yet or the method needs a Hessian
        that was not captured."""
        with self._lock:
            method = self.check_plan(plan)
            if self.needs_full_prune(plan):
                return self.prune(plan, progress, cancel)
            start = time.perf_counter()
            params = method.params(plan.method_params)
            pattern = parse_pattern(plan.pattern)
            targets = self.allocate(plan)
            todo = [ref for ref in self.refs.values()
                    if self._assigned.get(ref.name) != self._assignment(method, params, targets[ref.name], pattern)]
            done = 0
            for group in _prune_units(todo, method):
                if cancel is not None and cancel():
                    raise Cancelled()
                if progress:
                    progress(f"pruning {', '.join(r.name for r in group)}", done / len(todo))
                self._prune_group(group, self._stats_for(group[0], self._stats[group[0].block]), method, params, targets, pattern)
                done += len(group)
            if todo:
                release_freed_memory()
            if progress:
                progress("pruned", 1.0)
            self.plan = plan
            return Report(seconds=time.perf_counter() - start, linears_pruned=len(todo))

    def restore_dense(self) -> None:
        """Every linear back to its dense weight (statistics stay cached)."""
        with self._lock:
            self._restore(list(self._assigned), None, {})
            self.plan = None

    @contextlib.contextmanager
    def dense_weights(self) -> Iterator[None]:
        """Temporarily run the dense model (for dense reference probes); the pruning comes back after.
        Each pruned linear's weight is pointed at its dense weight (on the CPU, the kept tensor itself:
        no copy) and back at its own tensor after."""
        with self._lock:
            stash: dict[str, torch.Tensor] = {}
            try:
                for name in self._assigned:
                    weight = self.refs[name].module.weight
                    stash[name] = weight.data
                    weight.data = self._dense[name].to(weight.device, weight.dtype)
                yield
            finally:
                for name, data in stash.items():
                    self.refs[name].module.weight.data = data

    # ----- reading --------------------------------------------------------------------------------
    def _summary(self, name: str) -> WeightSummary:
        if name not in self._summaries:
            self._summaries[name] = weight_summary(self._dense[name])
        return self._summaries[name]

    def state(self) -> EngineState:
        """A snapshot of every block and linear as plain dataclasses."""
        with self._lock:
            M = float(self.plan.allocator_params.get("M", DEFAULT_M)) if self.plan and self.plan.allocator == "owl" else DEFAULT_M
            block_ratios, linear_ratios = self.outlier_ratios(M) if self._stats is not None else (None, {})
            blocks = []
            for block in self.linears:
                linears = []
                for ref in block:
                    s = self._summary(ref.name)
                    a = self._assigned.get(ref.name)
                    act = activation_norm(self._stats_for(ref, self._stats[ref.block])) if self._stats else (None, None)
                    recon = self._recon.get(ref.name)
                    linears.append(LinearState(
                        name=ref.name, block=ref.block, kind=ref.kind, shape=tuple(ref.module.weight.shape), numel=ref.numel,
                        target=a.target if a else 0.0, achieved=self._achieved.get(ref.name, 0.0),
                        method=a.method if a else None, w_mean_abs=s.mean_abs, w_std=s.std, w_max_abs=s.max_abs,
                        kurtosis=s.kurtosis, outlier_ratio=linear_ratios.get(ref.name), act_norm=act[0],
                        act_norm_max=act[1], recon_error=relative_error(*recon) if recon else None,
                    ))
                numel = sum(x.numel for x in linears)
                pooled = pool_weight_summaries([self._summary(r.name) for r in block])
                recons = [self._recon[r.name] for r in block if r.name in self._recon]
                i = block[0].block
                blocks.append(BlockState(
                    index=i, numel=numel,
                    target=sum(x.target * x.numel for x in linears) / numel,
                    achieved=sum(x.achieved * x.numel for x in linears) / numel,
                    w_mean_abs=pooled.mean_abs, w_std=pooled.std, w_max_abs=pooled.max_abs, kurtosis=pooled.kurtosis,
                    outlier_ratio=block_ratios[i] if block_ratios else None,
                    act_norm=sum(x.act_norm for x in linears) / len(linears) if self._stats else None,
                    recon_error=relative_error(sum(r[0] for r in recons), sum(r[1] for r in recons)) if len(recons) == len(block) else None,
                    linears=linears,
                ))
            total = sum(b.numel for b in blocks)
            nonzero = sum(round(x.numel * (1 - x.achieved)) for b in blocks for x in b.linears)
            return EngineState(
                model=self.loaded.spec, plan=self.plan,
                target=sum(b.target * b.numel for b in blocks) / total,
                achieved=1 - nonzero / total, params_total=total, params_nonzero=nonzero,
                calibrated=self._stats is not None, blocks=blocks,
            )

    def histogram(self, name: str, bins: int = 40) -> tuple[list[float], list[int], list[int]]:
        """|W| histograms of one linear: (bin edges, dense counts, current non-zero counts)."""
        if name not in self.refs:
            raise WorkbenchError(f"linear {name!r}", "no such linear")
        dense = self._dense[name].abs().to(torch.float32).flatten()
        current = self.refs[name].module.weight.detach().abs().to("cpu", torch.float32).flatten()
        top = dense.max().item() or 1.0
        edges = torch.linspace(0, top, bins + 1)
        dense_counts = torch.histc(dense, bins=bins, min=0, max=top)
        current_counts = torch.histc(current[current > 0], bins=bins, min=0, max=top)
        return edges.tolist(), [int(c) for c in dense_counts], [int(c) for c in current_counts]

    # ----- masks ------------------------------------------------------------------------------------
    def mask_fingerprints(self) -> dict[str, MaskFingerprint]:
        """Kept count, hash and sampled keep bits of every linear's current mask (see workbench.masks)."""
        with self._lock:
            return {name: fingerprint(keep_mask(ref.module.weight)) for name, ref in self.refs.items()}

    def keep_masks(self) -> dict[str, torch.Tensor]:
        """Every linear's current keep mask (True = non-zero), on the CPU."""
        with self._lock:
            return {name: keep_mask(ref.module.weight) for name, ref in self.refs.items()}

    def save_masks(self, path: str | os.PathLike) -> str:
        """Write the exact masks (and non-dense kept values) to a mask file; return its SHA-256."""
        with self._lock:
            return save_mask_file(path, {n: r.module.weight for n, r in self.refs.items()}, self._dense)

    def restore_masks(self, stored: dict[str, StoredMask], where: str = "mask file") -> int:
        """Put every linear's weight back exactly as stored: dense weights under the stored keep masks, or
        the stored kept values. Everything is checked before any weight changes. Returns how many
        linears changed. Their assignments stay as the plan made them, so later edits re-prune them."""
        with self._lock:
            if set(stored) != set(self.refs):
                other = sorted(set(stored) ^ set(self.refs))[0]
                raise WorkbenchError(where, f"masks do not fit this model (linear {other} is in one but not the other)")
            for name, s in stored.items():
                shape = tuple(self.refs[name].module.weight.shape)
                if tuple(s.keep.shape) != shape:
                    raise WorkbenchError(where, f"mask of {name} has shape {tuple(s.keep.shape)}, the model's is {shape}")
                if s.values is not None and s.values.numel() != int(s.keep.sum()):
                    raise WorkbenchError(where, f"{name}: {s.values.numel()} values for {int(s.keep.sum())} kept weights")
            changed = 0
            for name, s in stored.items():
                ref = self.refs[name]
                weight = self._dense[name].to(torch.float32).masked_fill(~s.keep, 0)
                if s.values is not None:
                    weight[s.keep] = s.values.to(torch.float32)
                current = ref.module.weight.detach().to("cpu", torch.float32)
                if torch.equal(current, weight):
                    continue
                self._put(ref, weight)
                self._achieved[name] = 1 - int(s.keep.sum()) / ref.numel
                self._recon.pop(name, None)
                changed += 1
            return changed

    def weights_digest(self) -> str:
        """SHA-256 over every linear's weight bytes, in name order: equal digests, bit-identical weights."""
        with self._lock:
            digest = hashlib.sha256()
            for name in sorted(self.refs):
                digest.update(self.refs[name].module.weight.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
            return digest.hexdigest()

    # ----- probes and export ----------------------------------------------------------------------
    def probe(self, names=("perplexity",), size: str = "quick", progress: Progress | None = None,
              cancel: Cancel | None = None) -> list[ProbeResult]:
        """Run probes on the current model; dense reference results are measured once and kept."""
        with self._lock:
            ctx = ProbeContext(self.loaded.model, self.loaded.tokenizer, self.loaded.device,
                               eval_source=self.calibration.source, seed=self.calibration.seed, cancel=cancel)
            missing = [n for n in names if n not in self.dense_probes or self.dense_probes[n].size != size]
            if missing:
                with self.dense_weights():
                    for result in run_probes(ctx, missing, size):
                        self.dense_probes[result.name] = result
            if not self._assigned:
                return [self.dense_probes[n] for n in names]
            return run_probes(ctx, names, size, progress, dense=self.dense_probes)

    def export(self, directory: str | os.PathLike) -> Path:
        """Save the pruned model and tokenizer with save_pretrained (safetensors), atomically: a failed
        export (disk full...) is one WorkbenchError and leaves neither the directory nor a temporary."""
        from workbench.atomic import atomic_directory

        with self._lock:
            target = Path(directory).expanduser().resolve()
            if target.exists() and (not target.is_dir() or any(target.iterdir())):
                raise WorkbenchError(f"--export {target}", "exists and is not an empty directory")
            with atomic_directory(target, f"--export {target}") as tmp:
                self.loaded.model.save_pretrained(tmp)
                self.loaded.tokenizer.save_pretrained(tmp)
            return target
