"""The pruning engine shared by the app, the CLI and session replay. It never imports textual.

`Engine` is a thin facade over named parts, and holds the one lock that makes every public call safe
from any thread:

- `WeightBank` (workbench.engine.weights): dense weights kept aside, what each linear holds now; every linear
  is `method.prune(dense, stats, target, pattern)` for its recorded assignment, or dense.
- `CalibrationCache` (workbench.engine.calibration): token windows, the committed statistics of the last full
  prune, the dense model's statistics, Hessians spilled to disk.
- `BlockSignals` (workbench.engine.signals): per-block signals (outlier ratios, influence scores), computed lazily and cached.
- `Planner` (workbench.engine.planner): a plan checked once (a `CheckedPlan`) and turned into per-linear
  assignments. Every public call takes a plan or a checked one (`check_plan`), and checks a plan once.
- `Pruner` (workbench.engine.pruning): the full and the incremental prune.
- `read_state` (workbench.engine.state): the read model.

Re-pruning is therefore idempotent and free of cumulative damage, and a session (calibration spec +
the plan of the last full prune + the current plan) replays exactly.

- `prune(plan)`: full calibration-aware prune; re-captures statistics (sequential or one-pass). On
  cancel, every touched linear is put back as it was before the call.
- `apply(plan)`: incremental; re-prunes from cached statistics only the linears whose assignment
  changed. Cancellable between linears; each linear is replaced in one step.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from workbench.allocators import DENSE_STATISTICS, GRADIENTS, SEARCH
from workbench.domain.plan import DROP_BY, MODES, CalibrationSpec, Plan
from workbench.engine.calibration import CalibrationCache
from workbench.engine.capture import MICRO_BATCH
from workbench.engine.export import export as export_model
from workbench.engine.masks import MaskFingerprint, StoredMask
from workbench.engine.planner import CheckedPlan, Planner
from workbench.engine.pruning import Cancel, Progress, Pruner
from workbench.engine.signals import BlockSignals
from workbench.engine.state import EngineState, read_state
from workbench.engine.weights import WeightBank
from workbench.infra.errors import WorkbenchError
from workbench.infra.memory import configure_allocator
from workbench.model.layout import find_linears, LinearRef
from workbench.model.loader import load_model, Loaded
from workbench.engine.probing import Prober
from workbench.probes import DenseTopK, ProbeResult
from workbench.structured.depth import DepthStatistics, drop_by_angular, drop_by_influence, parse_drop
from workbench.structured.depth import collect as collect_depth
from workbench.structured.experts import choose_expert_drops, expert_scores
from workbench.structured.shaper import Shaper


@dataclass
class Report:
    """Outcome of prune/apply."""

    seconds: float
    linears_pruned: int


def _locked(method):
    """Run an Engine method under the engine's lock."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return run


class Engine:
    """A loaded model, its dense weights, cached calibration statistics, and the current pruning."""

    def __init__(self, loaded: Loaded, calibration: CalibrationSpec | None = None):
        configure_allocator()  # before the bank's copies: large tensors mapped, freed back to the OS
        self.loaded = loaded
        self.calibration = calibration or CalibrationSpec()
        if self.calibration.mode not in MODES:
            raise WorkbenchError("calibration.mode", f"unknown mode {self.calibration.mode!r} (use {', '.join(MODES)})")
        self.linears: list[list[LinearRef]] = find_linears(loaded.model)
        self.refs: dict[str, LinearRef] = {r.name: r for block in self.linears for r in block}
        self.bank = WeightBank(self.refs, loaded.device)
        self.shaper = Shaper(loaded.model, self.linears, self.bank)
        self.statistics = CalibrationCache(loaded, self.calibration, self.dense_weights)
        self.signals = BlockSignals(self.linears, self.bank, self.statistics)
        self.planner = Planner(self.linears, self.calibration, self.signals, self.shaper)
        self.pruner = Pruner(self.linears, self.bank, self.statistics, self.shaper, self.planner)
        self._lock = threading.RLock()
        self.held: CheckedPlan | None = None  # the plan the model is pruned to now
        self.calibrated: CheckedPlan | None = None  # the plan of the last full prune (the committed statistics)
        self.prober = Prober(loaded, self.calibration, self.dense_weights)
        self.healing = None  # a finished healing run on the model (workbench.engine.healing.Healing)

    @property
    def plan(self) -> Plan | None:
        """The plan the model is pruned to now (None: dense)."""
        return self.held.plan if self.held else None

    @property
    def calibrated_with(self) -> Plan | None:
        """The plan of the last full prune, which the committed statistics were captured under."""
        return self.calibrated.plan if self.calibrated else None

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str = "embedded", device: str = "auto", dtype: str = "auto",
             calibration: CalibrationSpec | None = None, progress: Progress | None = None,
             offload: bool | None = None) -> "Engine":
        """Load a model spec (see `workbench.model.loader.load_model`) into a new engine."""
        return cls(load_model(model, device=device, dtype=dtype, offload=offload, progress=progress), calibration)

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer, calibration: CalibrationSpec | None = None,
                   spec: str = "in-memory") -> "Engine":
        """Wrap an already built model (tests use `tests.tiny.tiny_llama`); fused experts are unfused."""
        from workbench.model.experts import unfuse

        unfuse(model)
        param = next(model.parameters())
        loaded = Loaded(model=model, tokenizer=tokenizer, spec=spec, device=param.device, dtype=param.dtype, offload=False)
        return cls(loaded, calibration)

    # ----- plans and allocation -----------------------------------------------------------------
    def block_numels(self) -> list[int]:
        """Parameters in the linears of each block as the model runs now (0 for dropped blocks)."""
        return self.planner.block_numels()

    @_locked
    def check_plan(self, plan: Plan | CheckedPlan) -> CheckedPlan:
        """Refuse an invalid plan with a one-line error naming the key; return it checked. Every call below
        takes a plan or a checked one, and checks a plan once; give it the checked plan to check none."""
        return plan if isinstance(plan, CheckedPlan) else self.planner.check(plan)

    @_locked
    def prepare(self, plan: Plan | CheckedPlan, progress: Progress | None = None,
                cancel: Cancel | None = None) -> CheckedPlan:
        """Compute (once) what the plan's allocator reads before it can allocate, e.g. the dense model's
        statistics; a no-op when they are cached or not needed. A searching allocator (the agent) whose
        params lack recorded decisions runs its search on this engine and records them in
        `plan.allocator_params`, so the plan is self-contained afterwards. Returns the plan checked (checked
        again when the search changed it)."""
        checked = self.check_plan(plan)
        needs = self.planner.needs(checked)
        if self.planner.needs_dense_statistics(checked) and self.statistics.dense is None:
            if progress:
                progress(f"{checked.allocator.name if DENSE_STATISTICS in needs else 'width'}: statistics of the dense model", 0.0)
            self.statistics.dense_statistics(progress, cancel)
        if GRADIENTS in needs:
            spec = self.planner.influence_spec(checked)
            if progress and self.signals.influence_if_computed(spec) is None:
                progress(f"{checked.allocator.name}: influence scores from gradients of the dense model", 0.0)
            self.signals.influence(spec, progress, cancel)
        if SEARCH in needs:
            recorded = dict(checked.plan.allocator_params)
            checked.allocator.search(self, checked.plan, progress, cancel)
            if checked.plan.allocator_params != recorded:
                checked = self.planner.check(checked.plan)
        return checked

    @_locked
    def allocate(self, plan: Plan | CheckedPlan) -> dict[str, float]:
        """Per-linear target sparsity for `plan` (allocator, then block and linear overrides)."""
        return self.planner.allocate(self.check_plan(plan))

    @_locked
    def block_targets(self, plan: Plan | CheckedPlan) -> list[float]:
        """Parameter-weighted target of each block under `plan`."""
        return self.planner.block_targets(self.check_plan(plan))

    # ----- statistics ---------------------------------------------------------------------------
    @_locked
    def calibration_ids(self) -> torch.Tensor:
        """The calibration token windows (computed once)."""
        return self.statistics.ids()

    @_locked
    def calibrate(self, progress: Progress | None = None, cancel: Cancel | None = None) -> None:
        """Capture statistics of the dense model without pruning (for `workbench stats`)."""
        stats = self.statistics.dense_statistics(progress, cancel)
        if self.statistics.committed is None:
            self.statistics.commit(stats)

    @_locked
    def outlier_ratios(self, M: float, dense: bool = False) -> tuple[list[float], dict[str, float]]:
        """OWL outlier ratios of the dense weights, per block and per linear, from the dense model's
        statistics (`dense=True`) or the committed ones."""
        return self.signals.outlier_ratios(M, dense)

    @_locked
    def depth_scores(self, progress: Progress | None = None, cancel: Cancel | None = None) -> DepthStatistics:
        """Block influence and angular distances of the dense model (one pass, computed once)."""
        if self.shaper.depth_statistics is None:
            with self.dense_weights():
                self.shaper.depth_statistics = collect_depth(self.loaded.model, self.statistics.ids(), self.loaded.device,
                                                             progress, cancel)
        return self.shaper.depth_statistics

    @_locked
    def choose_expert_drops(self, by: str, keep: int, cancel: Cancel | None = None) -> dict[int, list[int]]:
        """Per MoE block, the experts outside the `keep` of highest router `frequency` or REAP saliency (`reap`),
        scored once on the dense model over the calibration tokens."""
        if self.shaper.expert_scores is None:
            with self.dense_weights():
                batches = list(self.statistics.ids().split(MICRO_BATCH))
                self.shaper.expert_scores = expert_scores(self.loaded.model, batches, self.loaded.device, cancel)
        return choose_expert_drops(self.shaper.expert_scores, by, keep)

    @_locked
    def choose_drops(self, count: int, by: str, progress: Progress | None = None, cancel: Cancel | None = None) -> list[int]:
        """The `count` blocks to drop: lowest block influence (`bi`), the run of lowest angular distance
        (`angular`), or a hand-picked list ("22,23", `count` ignored)."""
        if by not in DROP_BY:
            return parse_drop(by, len(self.linears))
        scores = self.depth_scores(progress, cancel)
        return drop_by_influence(scores.block_influence(), count) if by == "bi" else drop_by_angular(scores, count)

    # ----- pruning ------------------------------------------------------------------------------
    @_locked
    def prune(self, plan: Plan | CheckedPlan, progress: Progress | None = None, cancel: Cancel | None = None) -> Report:
        """Full calibration-aware prune: capture statistics block by block (sequential: from the blocks
        before, as pruned; one-pass: from the dense model) and prune each block as its statistics land."""
        start = time.perf_counter()
        self._unheal()
        checked = self.prepare(plan, progress, cancel)
        self.pruner.full(checked, checked.method.needs_hessian or bool(self.calibration.hessian), progress, cancel)
        self.held = self.calibrated = checked
        return Report(seconds=time.perf_counter() - start, linears_pruned=len(self.refs))

    @_locked
    def needs_full_prune(self, plan: Plan | CheckedPlan) -> bool:
        """Whether `apply(plan)` must run a full `prune`: no statistics cached yet, another structure (width
        or depth), or the plan's method needs a Hessian that was not captured."""
        checked = self.check_plan(plan)
        if self.statistics.committed is None or self.calibrated is None or checked.plan.structure != self.shaper.current:
            return True
        return checked.method.needs_hessian and not self.statistics.has_hessian()

    @_locked
    def apply(self, plan: Plan | CheckedPlan, progress: Progress | None = None, cancel: Cancel | None = None) -> Report:
        """Incremental prune from cached statistics: only linears whose assignment changed are redone.
        Cancellable between linears; each linear is replaced in one step. Falls back to a full `prune`
        when there are no statistics yet or the method needs a Hessian that was not captured."""
        checked = self.check_plan(plan)
        if self.needs_full_prune(checked):
            return self.prune(checked, progress, cancel)
        start = time.perf_counter()
        self._unheal()
        checked = self.prepare(checked, progress, cancel)
        pruned = self.pruner.incremental(checked, progress, cancel)
        self.held = checked
        return Report(seconds=time.perf_counter() - start, linears_pruned=pruned)

    @_locked
    def restore_dense(self) -> None:
        """Every linear back to its dense weight, every block at full width and in the forward pass
        (statistics stay cached)."""
        self._unheal()
        self.pruner.restore_dense()
        self.held = None

    @contextlib.contextmanager
    def dense_weights(self) -> Iterator[None]:
        """Temporarily run the dense model at full width and depth with every expert (for dense reference probes and dense
        statistics); the pruning and the structure come back after. The engine stays locked meanwhile."""
        unhealed = self.healing.suspended() if self.healing is not None else contextlib.nullcontext()
        with self._lock, unhealed, self.shaper.full(), self.bank.dense_weights():
            yield

    # ----- reading --------------------------------------------------------------------------------
    @_locked
    def state(self) -> EngineState:
        """A snapshot of every block and linear as plain dataclasses."""
        return read_state(self.loaded.spec, self.plan, self.linears, self.bank, self.statistics, self.signals,
                          self.shaper, self.planner.outlier_M(self.held))

    @_locked
    def histogram(self, name: str, bins: int = 40) -> tuple[list[float], list[int], list[int]]:
        """|W| histograms of one linear: (bin edges, dense counts, current non-zero counts)."""
        return self.bank.histogram(name, bins)

    # ----- masks ------------------------------------------------------------------------------------
    @_locked
    def mask_fingerprints(self) -> dict[str, MaskFingerprint]:
        """Kept count, hash and sampled keep bits of every linear's current mask (see workbench.engine.masks)."""
        return self.bank.fingerprints()

    @_locked
    def keep_masks(self) -> dict[str, torch.Tensor]:
        """Every linear's current keep mask (True = non-zero), on the CPU."""
        return self.bank.keep_masks()

    @_locked
    def save_masks(self, path: str | os.PathLike) -> str:
        """Write the exact masks (and non-dense kept values) to a mask file; return its SHA-256."""
        return self.bank.save_masks(path)

    @_locked
    def restore_masks(self, stored: dict[str, StoredMask], where: str = "mask file") -> int:
        """Put every linear's weight back exactly as stored: dense weights under the stored keep masks, or
        the stored kept values. Everything is checked before any weight changes. Returns how many
        linears changed. Their assignments stay as the plan made them, so later edits re-prune them."""
        self._unheal()
        return self.bank.restore_masks(stored, where)

    @_locked
    def weights_digest(self) -> str:
        """SHA-256 over every linear's weight bytes, in name order: equal digests, bit-identical weights."""
        return self.bank.digest()

    # ----- probes and export ----------------------------------------------------------------------
    @property
    def dense_probes(self) -> dict[str, ProbeResult]:
        """The dense model's probe results, by name (measured once, see `Prober`)."""
        return self.prober.dense

    @_locked
    def dense_reference(self, names, size: str = "quick", cancel: Cancel | None = None) -> list[ProbeResult]:
        """The dense model's results for probes `names`, measured once (dense weights swapped in) and kept."""
        return self.prober.dense_reference(names, size, cancel)

    @_locked
    def probe(self, names=("perplexity",), size: str = "quick", progress: Progress | None = None,
              cancel: Cancel | None = None) -> list[ProbeResult]:
        """Run probes on the current model; dense reference results are measured once and kept."""
        changed = bool(self.bank.assignments()) or self.healing is not None
        return self.prober.run(names, size, changed, progress, cancel)

    @_locked
    def dense_topk(self, windows: torch.Tensor) -> DenseTopK:
        """The kl probe's dense reference at `windows` (see `Prober.dense_topk`)."""
        return self.prober.dense_topk(windows)

    def export(self, directory: str | os.PathLike, notice: Callable[[str], None] | None = None) -> Path:
        """Save the model as it runs now (see `workbench.engine.export.export`), atomically."""
        with self._lock:
            return export_model(self, directory, notice)

    @_locked
    def heal(self, spec, progress: Progress | None = None, cancel: Cancel | None = None,
             checkpoint: Path | None = None, resume: Path | None = None, saved=None):
        """Heal the model as pruned now, keeping its cut (`workbench.engine.healing.heal`); any later edit undoes it."""
        from workbench.engine.healing import heal

        self.healing = heal(self.loaded, self.linears, self.bank, self.shaper.running, spec,
                            spec.data or self.calibration.text, progress, cancel, checkpoint, resume, saved, self._unheal)
        return self.healing.healed

    def _unheal(self) -> None:
        if self.healing is not None:
            self.healing.undo()
            self.healing = None
