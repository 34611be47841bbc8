"""OWL, outlier-weighted layerwise sparsity (Yin et al., arXiv 2310.05175; luuyin/OWL).

Block i's outlier ratio D_i is the share of its pooled Wanda scores |W| * ||X||_2 above M times their
mean, measured on the dense model. Ratios are mapped linearly so blocks with more outliers are pruned
less: r_i = (D_i - min D) / (max D - min D) * 2 * lambda, shifted to mean 1 - S, and s_i = 1 - r_i.
As in the OWL code, the targets span exactly 2 * lambda with mean S: symmetric ratios fill
[S - lambda, S + lambda]; skewed ones (a few outlier-heavy blocks) shift the span, e.g. a single
outlier-heavy block sits near S - 2 * lambda. A final rebalance makes the parameter-weighted mean exactly
S (it only matters when blocks differ in size or a target is clipped to [0, 0.99]).
"""

from workbench.allocators import ALLOCATORS, DEFAULT_M, DENSE_STATISTICS, AllocationContext, Allocator, rebalance
from workbench.infra.params import Param


def allocate_owl(ctx: AllocationContext, sparsity: float, **params) -> list[float]:
    """Per-block targets from the dense model's outlier ratios (`params` checked against their declarations)."""
    lam = params["lambda"]
    ratios = ctx.outlier_ratios(params["M"])
    lo, hi = min(ratios), max(ratios)
    if hi - lo < 1e-12:
        return [sparsity] * len(ratios)
    keep = [(d - lo) / (hi - lo) * 2 * lam for d in ratios]
    mean_keep = sum(keep) / len(keep)
    targets = [1 - (r - mean_keep + (1 - sparsity)) for r in keep]
    return rebalance(targets, ctx.block_numels, sparsity)


ALLOCATORS.add(Allocator(
    "owl", allocate_owl, description="outlier-weighted: more outliers, less pruning, within S +- lambda",
    declared=(Param("M", DEFAULT_M, "outlier threshold: a score above M x the block mean is an outlier", low=0, open_low=True),
              Param("lambda", 0.08, "targets stay within the global target +- lambda", low=0, high=1, open_high=True)),
    needs=frozenset({DENSE_STATISTICS}),
))
