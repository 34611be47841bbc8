"""Allocators decide how much to prune in each block. Each is one module here registering an
`Allocator` with `ALLOCATORS.add(Allocator(...))`.

An allocator returns one target sparsity per block whose parameter-weighted mean is the global target,
each in [0, MAX_SPARSITY]. Manual per-block and per-linear overrides are applied on top by the engine.
It declares what it needs (`needs`, from `NEEDS`), so the engine computes that before allocating and
nobody outside this package names an allocator: one that needs DENSE_STATISTICS reads outlier ratios at
its parameter `M` (DEFAULT_M without one); one that needs GRADIENTS reads the influence scores its
parameters name (InfluenceSpec's fields); one that needs SEARCH gives its `search`. it declares its parameters (`workbench.infra.params`),
from which its defaults, the checks of sessions and the CLI, and the app's form are derived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from workbench.domain.plan import MAX_SPARSITY
from workbench.infra.params import Param, complete, defaults
from workbench.infra.registry import Registry


@dataclass(frozen=True)
class InfluenceSpec:
    """Which per-block influence scores (see `workbench.engine.gradients`): per-example gradients of the linears in
    `scope` on `train` and `val` calibration windows of `seqlen` tokens, combined by `estimator` and
    `aggregate`."""

    estimator: str
    aggregate: str
    scope: str
    train: int
    val: int
    seqlen: int

    @classmethod
    def from_params(cls, params: dict) -> "InfluenceSpec":
        """The spec an allocator's parameters name."""
        return cls(params["estimator"], params["aggregate"], params["scope"], int(params["train"]), int(params["val"]),
                   int(params["seqlen"]))


@dataclass
class AllocationContext:
    """What an allocator may look at: block sizes, and lazily computed statistics of the dense model."""

    block_numels: list[int]
    outlier_ratios: Callable[[float], list[float]]  # M -> per-block OWL outlier ratio
    influence: Callable[[InfluenceSpec], list[float]] | None = None  # spec -> per-block influence score (LayerIF)


DEFAULT_M = 5.0  # outlier threshold: a Wanda score above M x its block mean is an outlier (OWL)
DENSE_STATISTICS = "dense_statistics"  # one-pass calibration statistics of the dense model
SEARCH = "search"  # the allocator decides by pruning and probing (the agent): `Engine.prepare` runs its `search`
GRADIENTS = "gradients"  # per-example gradients of the dense model: `Engine.prepare` computes the allocator's `influence`
NEEDS = (DENSE_STATISTICS, SEARCH, GRADIENTS)


@dataclass(frozen=True)
class Allocator:
    """A registered allocator: `allocate(ctx, sparsity, **params) -> per-block targets`.

    `declared`: its parameters; `check(params, where)`, when given, refuses what spans several of them
    (a WorkbenchError naming `where.KEY`). An allocator that needs SEARCH has `search(engine, plan,
    progress, cancel)`: when `plan.allocator_params` lack the decisions `allocate` replays, it runs the search
    on the engine and records them there (a no-op otherwise)."""

    name: str
    allocate: Callable[..., list[float]]
    description: str
    declared: tuple[Param, ...] = ()
    needs: frozenset[str] = frozenset()
    check: Callable[[dict, str], None] | None = None
    search: Callable[..., None] | None = None

    def outlier_M(self, params: dict) -> float:
        """The M of the outlier ratios the allocator reads (the panes show those): its `M`, else DEFAULT_M."""
        return float(params.get("M", DEFAULT_M)) if DENSE_STATISTICS in self.needs else DEFAULT_M

    def influence(self, params: dict) -> InfluenceSpec | None:
        """The influence scores an allocator that needs GRADIENTS reads, named by its parameters."""
        return InfluenceSpec.from_params(params) if GRADIENTS in self.needs else None

    @property
    def defaults(self) -> dict:
        """Every parameter's default, by name."""
        return defaults(self.declared)

    def params(self, given: dict, where: str = "allocator_params") -> dict:
        """`given` completed with defaults; unknown keys, wrong types and values out of range are refused."""
        params = complete("allocator", self.name, self.declared, given, where)
        if self.check is not None:
            self.check(params, where)
        return params


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
