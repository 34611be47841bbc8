"""Per-block signals that allocators read and the panes show, computed lazily and cached: outlier ratios
from the dense weights and one set of calibration statistics (for as long as those statistics are in
use), influence scores from gradients of the dense model on calibration windows (for the engine's life:
they depend on neither the statistics nor the pruning).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from workbench.allocators import InfluenceSpec
from workbench.engine.calibration import CalibrationCache
from workbench.engine.capture import BlockStats
from workbench.engine.gradients import AGGREGATES, LinearGrams, block_influence, gradient_grams
from workbench.engine.stats import outlier_count, wanda_score_sum
from workbench.engine.weights import WeightBank
from workbench.infra.errors import WorkbenchError
from workbench.model.data import disjoint_windows
from workbench.model.layout import LinearRef

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]


def _gradients_key(spec: InfluenceSpec) -> tuple:
    """What the gradients of `spec` depend on: scope and windows (not estimator or aggregate)."""
    return spec.scope, spec.train, spec.val, spec.seqlen


@dataclass(frozen=True)
class InfluenceScores:
    """LayerIF's raw per-block scores of the dense model for `spec` (its windows, scope and estimator), under
    every aggregate; `blocks` are those of `spec.aggregate`, the ones the allocator maps."""

    spec: InfluenceSpec
    by_aggregate: dict[str, list[float]]

    @property
    def blocks(self) -> list[float]:
        return self.by_aggregate[self.spec.aggregate]

    def to_dict(self) -> dict:
        """Plain data for a session or `--json`: the spec's fields and `scores`, per aggregate a list per block."""
        return {**asdict(self.spec), "scores": dict(self.by_aggregate)}


class BlockSignals:
    """Signals of every block; `dense=True` reads the dense model's statistics (computed on first use),
    otherwise the committed ones."""

    def __init__(self, linears: list[list[LinearRef]], bank: WeightBank, cache: CalibrationCache):
        self.linears = linears
        self.bank = bank
        self.cache = cache
        self._values: dict[tuple, tuple[list, object]] = {}
        self._grams: dict[tuple, list[list[LinearGrams]]] = {}  # (scope, train, val, seqlen) -> per block, per linear
        self._influence: dict[InfluenceSpec, list[float]] = {}
        self._last_influence: InfluenceSpec | None = None

    def expert_usage(self, progress: Progress | None = None, cancel: Cancel | None = None) -> dict[int, dict[int, int]]:
        """Per MoE block, the calibration tokens the router sends each expert on the dense model."""
        stats = self._statistics(True, progress, cancel)
        return {i: {int(g.split(".")[1]): s.tokens for g, s in block.items() if g.startswith("experts.") and g.endswith(".gate")}
                for i, block in enumerate(stats) if block is not None}

    def _statistics(self, dense: bool, progress: Progress | None, cancel: Cancel | None) -> list[BlockStats]:
        stats = self.cache.dense_statistics(progress, cancel) if dense else self.cache.committed
        if stats is None:
            raise WorkbenchError("outlier ratio", "no calibration statistics yet: prune or calibrate first")
        return stats

    def _cached(self, key: tuple, stats: list[BlockStats], compute: Callable[[], object]):
        """`compute()` once per (key, statistics); values of statistics no longer in use are dropped. A value
        holds its statistics, so their id() is not handed to newer ones while the value is kept."""
        live = (id(self.cache.committed), id(self.cache.dense))
        self._values = {k: v for k, v in self._values.items() if k[-1] in live}
        full = (*key, id(stats))
        if full not in self._values:
            self._values[full] = (stats, compute())
        return self._values[full][1]

    def outlier_ratios(self, M: float, dense: bool = False, progress: Progress | None = None,
                       cancel: Cancel | None = None) -> tuple[list[float], dict[str, float]]:
        """OWL outlier ratios of the dense weights: per block (Wanda scores pooled over its linears above M
        times their block mean) and per linear (above M times the linear's own mean)."""
        stats = self._statistics(dense, progress, cancel)
        weight = self.bank.original if dense else self.bank.dense  # the dense model is measured at full size
        return self._cached(("outlier_ratio", float(M)), stats, lambda: self._outlier_ratios(float(M), stats, weight))

    def _outlier_ratios(self, M: float, stats: list[BlockStats | None],
                        weight: Callable[[str], torch.Tensor]) -> tuple[list[float | None], dict[str, float]]:
        per_block, per_linear = [], {}
        for block, block_stats in zip(self.linears, stats):
            if block_stats is None:  # a dropped block
                per_block.append(None)
                continue
            block = [r for r in block if r.group in block_stats]  # not a dropped expert (it has no statistics)
            dense = {r.name: weight(r.name).to(torch.float32) for r in block}
            linear = {r.name: self.cache.channel_norms(r, stats) for r in block}
            total = sum(wanda_score_sum(dense[r.name], linear[r.name]) for r in block)
            numel = sum(w.numel() for w in dense.values())
            threshold = M * total / numel
            count = 0
            for r in block:
                s = linear[r.name]
                count += outlier_count(dense[r.name], s, threshold)
                own = M * wanda_score_sum(dense[r.name], s) / dense[r.name].numel()
                per_linear[r.name] = outlier_count(dense[r.name], s, own) / dense[r.name].numel()
            per_block.append(count / numel)
        return per_block, per_linear

    def influence(self, spec: InfluenceSpec, progress: Progress | None = None, cancel: Cancel | None = None) -> list[float]:
        """LayerIF influence score per block of the dense model (see `workbench.engine.gradients`). The gradients'
        Gram matrices are computed once per scope and window counts (the expensive part); estimator and
        aggregation are cheap on top. A cancelled computation keeps nothing."""
        if spec not in self._influence:
            key = _gradients_key(spec)
            if key not in self._grams:
                self._grams[key] = self._gradient_grams(spec, progress, cancel)
            self._influence[spec] = block_influence(self._grams[key], spec.estimator, spec.aggregate)
        self._last_influence = spec
        return self._influence[spec]

    def influence_if_computed(self, spec: InfluenceSpec | None = None) -> list[float] | None:
        """The influence scores of `spec` (default: the last read) when computed already, else None."""
        return self._influence.get(spec or self._last_influence)

    def influence_scores(self, spec: InfluenceSpec | None = None) -> InfluenceScores | None:
        """The raw scores of `spec` (default: the last read) under every aggregate when its gradients are
        computed already, else None (computes no gradients)."""
        spec = spec or self._last_influence
        grams = self._grams.get(_gradients_key(spec)) if spec else None
        if grams is None:
            return None
        return InfluenceScores(spec, {name: block_influence(grams, spec.estimator, name) for name in AGGREGATES})

    def _gradient_grams(self, spec: InfluenceSpec, progress: Progress | None, cancel: Cancel | None) -> list[list[LinearGrams]]:
        """Training and validation examples: the first `train` and the next `val` of one seeded draw of
        disjoint `seqlen`-token windows of the calibration part (no token position in both)."""
        loaded, c = self.cache.loaded, self.cache.spec
        ids = disjoint_windows(loaded.tokenizer, c.text, spec.train + spec.val, spec.seqlen, c.seed)
        with self.cache.dense_model():
            return gradient_grams(loaded.model, ids[: spec.train], ids[spec.train :], loaded.device, spec.scope,
                                  progress, cancel)
