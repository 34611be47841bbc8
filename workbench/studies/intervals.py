"""Paired bootstrap intervals for comparisons: plain functions on probe results' units (numpy, no model).

Two results of one probe measured the same items (exact-match probes) or the same chunks of tokens
(perplexity, kl) in the same order, so their difference is judged on the pairs: each resample draws unit
indices with replacement, the same indices for both sides, and scores each side on them exactly as
`workbench.probes.Units.score(index)` does; the 95% interval of score(b) - score(a) is the 2.5th to 97.5th
percentile of the `RESAMPLES` resampled differences. A whole probe row (dense and every variant) is scored
on one matrix of draw counts, so every delta vs dense and every pairwise difference comes from one matrix
product (no loop over resamples).

Reproducible: the indices come from PCG64's raw output (NumPy keeps bit generators' streams fixed across
versions and machines), seeded by `SEED`, the probe's name and its unit count (`probe_seed`), so a saved
file gives the same interval on any machine (sums may differ in their last bit between BLAS builds, far
below the printed digits), and one pair's interval does not depend on which other variants are compared.

Results without units (old files, the efficiency probe) get no interval; their best is decided by score.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from workbench.infra.errors import WorkbenchError
from workbench.probes import ProbeResult, Units, flips

SEED = 18
RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A difference score(b) - score(a) and its paired bootstrap interval [low, high]."""

    delta: float
    low: float
    high: float

    def includes_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict:
        return {"delta": self.delta, "low": self.low, "high": self.high}


def probe_seed(probe: str, units: int, seed: int = SEED) -> int:
    """The seed of one probe's resamples: stable across runs, machines and Python's hash salt."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{probe}:{units}".encode()).digest()[:8], "little")


def resample_indices(n: int, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """`resamples` x `n` unit indices drawn with replacement, from PCG64's raw 64-bit stream (its high 32
    bits scaled to [0, n))."""
    raw = np.random.default_rng(seed).bit_generator.random_raw(resamples * n)
    return (((raw >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32)).astype(np.int64).reshape(resamples, n)


def draw_counts(index: np.ndarray) -> np.ndarray:
    """How often each unit is drawn in each resample (resamples x n) from the indices of `resample_indices`."""
    resamples, n = index.shape
    offsets = np.arange(resamples, dtype=np.int64)[:, None] * n
    return np.bincount((index + offsets).ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def aligned_units(results: list[ProbeResult | None], key: str = "score") -> list[Units | None]:
    """The units under `key` of each result (None where it has none); those that have them must pair up:
    same probe, unit count and link, else one WorkbenchError."""
    units = [r.units.get(key) if r is not None else None for r in results]
    present = [(r, u) for r, u in zip(results, units) if u is not None]
    if present:
        first, u0 = present[0]
        for r, u in present[1:]:
            if (r.name, r.size, len(u.values), u.link) != (first.name, first.size, len(u0.values), u0.link):
                raise WorkbenchError(f"interval {first.name}", f"cannot pair {len(u0.values)} {u0.link} units ({first.size}) "
                                                               f"with {len(u.values)} {u.link} units of {r.name} ({r.size}): not the same items")
    return units


def resampled_scores(units: list[Units | None], counts: np.ndarray) -> np.ndarray:
    """Each side's score on every resample (resamples x sides; NaN for a side without units)."""
    out = np.full((counts.shape[0], len(units)), np.nan)
    have = [i for i, u in enumerate(units) if u is not None]
    if not have:
        return out
    n = counts.shape[1]
    values = np.array([units[i].values for i in have], dtype=np.float64).T
    weights = np.array([units[i].weights if units[i].weights is not None else [1.0] * n for i in have], dtype=np.float64).T
    mean = (counts @ values) / (counts @ weights)
    out[:, have] = np.exp(mean) if units[have[0]].link == "exp" else mean
    return out


def point(result: ProbeResult, key: str = "score") -> float:
    """The statistic an interval is centred on: the recorded score, or another units key's value."""
    return result.score if key == "score" else result.units[key].score()


def bootstrap(results: list[ProbeResult | None], key: str = "score", seed: int = SEED,
              resamples: int = RESAMPLES) -> np.ndarray | None:
    """Resampled scores of results of one probe on shared indices (resamples x results); None when no
    result has units."""
    units = aligned_units(results, key)
    first = next(((r.name, len(u.values)) for r, u in zip(results, units) if u is not None), None)
    if first is None:
        return None
    name, n = first
    return resampled_scores(units, draw_counts(resample_indices(n, probe_seed(name, n, seed), resamples)))


def quantiles(differences: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of resampled differences along the last axis (the resamples)."""
    low, high = np.quantile(differences, [(1 - level) / 2, (1 + level) / 2], axis=-1)
    return low, high


def paired_interval(a: ProbeResult, b: ProbeResult, key: str = "score", seed: int = SEED,
                    resamples: int = RESAMPLES) -> Interval | None:
    """score(b) - score(a) with its paired 95% interval; None when either side has no units."""
    scores = bootstrap([a, b], key, seed, resamples)
    if scores is None or np.isnan(scores).any():
        return None
    low, high = quantiles(scores[:, 1] - scores[:, 0])
    return Interval(point(b, key) - point(a, key), float(low), float(high))


@dataclass
class Row:
    """One probe across the variants: each variant's delta vs dense with its interval, every pairwise
    difference (key (a, b): score(b) - score(a), both with units), flips vs dense, and the best variant
    (only where every other's interval against it excludes zero) or else the variants tied at the top."""

    probe: str
    higher_is_better: bool
    deltas: dict[str, Interval | None]
    pairwise: dict[tuple[str, str], Interval]
    flips: dict[str, dict[str, int]]
    best: str | None
    tied: list[str]

    def to_dict(self) -> dict:
        return {"higher_is_better": self.higher_is_better, "best": self.best, "tied": list(self.tied),
                "deltas": {n: i.to_dict() if i else None for n, i in self.deltas.items()},
                "pairwise": [{"a": a, "b": b, **i.to_dict()} for (a, b), i in self.pairwise.items()],
                "flips": dict(self.flips)}


def probe_row(probe: str, dense: ProbeResult | None, results: dict[str, ProbeResult], seed: int = SEED,
              resamples: int = RESAMPLES) -> Row:
    """The row of `probe`: `results` maps variant name to its result (variants without it left out)."""
    names = list(results)
    sides = [dense, *results.values()]
    higher = next((r.higher_is_better for r in sides if r is not None), True)
    scores = bootstrap(sides, "score", seed, resamples)
    low = high = None
    if scores is not None:
        per_side = np.ascontiguousarray(scores.T)
        low, high = quantiles(per_side[None, :, :] - per_side[:, None, :])  # [i, j]: side j - side i
    have = [scores is not None and not np.isnan(scores[0, i]) for i in range(len(sides))]

    def interval(i: int, j: int) -> Interval | None:
        if not (have[i] and have[j]):
            return None
        return Interval(sides[j].score - sides[i].score, float(low[i, j]), float(high[i, j]))

    deltas = {n: interval(0, j + 1) if dense is not None else None for j, n in enumerate(names)}
    pairwise = {(names[i], names[j]): iv for i in range(len(names)) for j in range(i + 1, len(names))
                if (iv := interval(i + 1, j + 1)) is not None}
    changed = {n: f for n, r in results.items() if (f := flips(dense, r)) is not None}
    best, tied = standing(results, higher, pairwise)
    return Row(probe, higher, deltas, pairwise, changed, best, tied)


def standing(results: dict[str, ProbeResult], higher_is_better: bool,
             pairwise: dict[tuple[str, str], Interval]) -> tuple[str | None, list[str]]:
    """(best, tied): the top score is best only where its interval against every other variant (the
    runner-up first) excludes zero; otherwise the variants whose interval against the top includes zero
    (or, without units, whose score equals it) are tied, the top first. One variant alone is neither."""
    if len(results) < 2:
        return None, []
    ranked = sorted(results, key=lambda n: results[n].score, reverse=higher_is_better)
    top = ranked[0]

    def level(other: str) -> bool:
        iv = pairwise.get((top, other)) or pairwise.get((other, top))
        return iv.includes_zero() if iv is not None else results[other].score == results[top].score

    tied = [top, *(n for n in ranked[1:] if level(n))]
    return (top, []) if len(tied) == 1 else (None, tied)
