"""Allocators decide how much to prune in each block. Each is one module here registering an
`Allocator` with `ALLOCATORS.add(Allocator(...))`.

An allocator returns one target sparsity per block whose parameter-weighted mean is the global target,
each in [0, MAX_SPARSITY]. Manual per-block and per-linear overrides are applied on top by the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from workbench.registry import Registry, complete_params

MAX_SPARSITY = 0.99


@dataclass
class AllocationContext:
    """What an allocator may look at: block sizes, and lazily computed statistics of the dense model."""

    block_numels: list[int]
    outlier_ratios: Callable[[float], list[float]]  # M -> per-block OWL outlier ratio


@dataclass(frozen=True)
class Allocator:
    """A registered allocator: `allocate(ctx, sparsity, **params) -> per-block targets`."""

    name: str
    allocate: Callable[..., list[float]]
    defaults: dict
    description: str

    def params(self, given: dict, where: str = "allocator_params") -> dict:
        """`given` completed with defaults; unknown keys are refused."""
        return complete_params("allocator", self.name, self.defaults, given, where)


ALLOCATORS: Registry[Allocator] = Registry("allocator", __name__)


def rebalance(targets: list[float], numels: list[int], sparsity: float, high: float = MAX_SPARSITY) -> list[float]:
    """Shift `targets` so their `numels`-weighted mean is `sparsity`, clipping each to [0, high].

    Clipped entries are frozen and the shift is redone on the rest, so the mean is exact whenever
    it is reachable at all.
    """
    targets = [min(max(t, 0.0), high) for t in targets]
    total = float(sum(numels))
    for _ in range(len(targets) + 1):
        mean = sum(t * n for t, n in zip(targets, numels)) / total
        gap = sparsity - mean
        if abs(gap) < 1e-12:
            break
        free = [i for i, t in enumerate(targets) if (0.0 < t < high) or (t == 0.0 and gap > 0) or (t == high and gap < 0)]
        if not free:
            break
        free_numel = sum(numels[i] for i in free)
        shift = gap * total / free_numel
        for i in free:
            targets[i] = min(max(targets[i] + shift, 0.0), high)
    return targets
