"""Per-block signals that allocators read and the panes show, computed lazily from the dense weights and
one set of calibration statistics, and cached for as long as those statistics are in use.
"""

from __future__ import annotations

from typing import Callable

import torch

from workbench.calibration import CalibrationCache
from workbench.capture import BlockStats
from workbench.errors import WorkbenchError
from workbench.model import LinearRef
from workbench.stats import outlier_count, wanda_score_sum
from workbench.weights import WeightBank

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]


class BlockSignals:
    """Signals of every block; `dense=True` reads the dense model's statistics (computed on first use),
    otherwise the committed ones."""

    def __init__(self, linears: list[list[LinearRef]], bank: WeightBank, cache: CalibrationCache):
        self.linears = linears
        self.bank = bank
        self.cache = cache
        self._values: dict[tuple, object] = {}

    def _statistics(self, dense: bool, progress: Progress | None, cancel: Cancel | None) -> list[BlockStats]:
        stats = self.cache.dense_statistics(progress, cancel) if dense else self.cache.committed
        if stats is None:
            raise WorkbenchError("outlier ratio", "no calibration statistics yet: prune or calibrate first")
        return stats

    def _cached(self, key: tuple, stats: list[BlockStats], compute: Callable[[], object]):
        """`compute()` once per (key, statistics); values of statistics no longer in use are dropped."""
        live = (id(self.cache.committed), id(self.cache.dense))
        self._values = {k: v for k, v in self._values.items() if k[-1] in live}
        full = (*key, id(stats))
        if full not in self._values:
            self._values[full] = compute()
        return self._values[full]

    def outlier_ratios(self, M: float, dense: bool = False, progress: Progress | None = None,
                       cancel: Cancel | None = None) -> tuple[list[float], dict[str, float]]:
        """OWL outlier ratios of the dense weights: per block (Wanda scores pooled over its linears above M
        times their block mean) and per linear (above M times the linear's own mean)."""
        stats = self._statistics(dense, progress, cancel)
        return self._cached(("outlier_ratio", float(M)), stats, lambda: self._outlier_ratios(float(M), stats))

    def _outlier_ratios(self, M: float, stats: list[BlockStats]) -> tuple[list[float], dict[str, float]]:
        per_block, per_linear = [], {}
        for block in self.linears:
            dense = {r.name: self.bank.dense(r.name).to(torch.float32) for r in block}
            linear = {r.name: self.cache.channel_norms(r, stats) for r in block}
            total = sum(wanda_score_sum(dense[r.name], linear[r.name]) for r in block)
            numel = sum(r.numel for r in block)
            threshold = M * total / numel
            count = 0
            for r in block:
                s = linear[r.name]
                count += outlier_count(dense[r.name], s, threshold)
                own = M * wanda_score_sum(dense[r.name], s) / r.numel
                per_linear[r.name] = outlier_count(dense[r.name], s, own) / r.numel
            per_block.append(count / numel)
        return per_block, per_linear
