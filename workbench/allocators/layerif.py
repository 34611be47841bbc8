"""LayerIF, influence-guided layerwise sparsity (Askari et al., arXiv 2505.23811; scores as in
HadiAskari/Expert_Allocation `LayerIF_Computation/`, mapping as in HadiAskari/LayerIF_Pruning_New
`lib/prune.py`, which is AlphaPruning's `ww_sparsity`).

Each block gets an influence score from per-example gradients of the dense model (`workbench.engine.gradients`):
DataInf (or the plain gradient dot product, `identity`) over disjoint training and validation windows of
the calibration source, one influence matrix (validation x training) per block, aggregated (`aggregate`):
- `positive-totals` (default, the paper's "cumulative positive influence"): each training example's
  influence summed over the validation set, the positive totals summed;
- `notebook` (the authors' `expert_allocator.ipynb`): the same totals, the positive ones deleted and the
  rest summed;
- `pairwise-positive` (this workbench's earlier default): every (validation, training) pair clamped at 0,
  then summed, which measures spread rather than sign;
- `all`: every value summed.
A lower score marks a better-trained block, which is pruned less:
r_i = (S_i - min S) / (max S - min S) * 2 eps + (1 - eps), scaled by S * sum N / sum N r so the
parameter-weighted mean is the target, capped at 0.99 (a rebalance keeps the mean exact).

Departures from the paper: for the cost on a CPU (the embedded model's scores take about 85 s on two
cores; the time grows with (train + val) x seqlen), 24 training and 8 validation windows of 64 tokens
from the calibration source instead of 300 and 96 task examples of up to 128 tokens (all sizes are
parameters); a final rebalance instead of a bare cap, so the mean stays exact when a block is capped.
"""

from workbench.allocators import ALLOCATORS, GRADIENTS, AllocationContext, Allocator, InfluenceSpec, rebalance
from workbench.infra.errors import WorkbenchError
from workbench.infra.params import Param

ESTIMATORS = ("datainf", "identity")  # as in workbench.engine.gradients.ESTIMATORS
AGGREGATES = ("positive-totals", "notebook", "pairwise-positive", "all")  # as in workbench.engine.gradients.AGGREGATES
SCOPES = ("attention", "all")


def linear_map(scores: list[float], numels: list[int], sparsity: float, eps: float) -> list[float]:
    """AlphaPruning's map: scores linearly into [1 - eps, 1 + eps], times the factor that makes the
    `numels`-weighted mean `sparsity`, capped at 0.99 (the mean kept exact); equal scores, uniform."""
    lo, hi = min(scores), max(scores)
    if hi <= lo:
        return [sparsity] * len(scores)
    ratios = [(s - lo) / (hi - lo) * 2 * eps + (1 - eps) for s in scores]
    scale = sparsity * sum(numels) / sum(n * r for n, r in zip(numels, ratios))
    return rebalance([r * scale for r in ratios], numels, sparsity)


def allocate_layerif(ctx: AllocationContext, sparsity: float, **params) -> list[float]:
    """Per-block targets from the dense model's influence scores (`params` checked against their declarations)."""
    if ctx.influence is None:
        raise WorkbenchError("allocator layerif", "influence scores are not available here")
    return linear_map(ctx.influence(InfluenceSpec.from_params(params)), ctx.block_numels, sparsity, params["eps"])


ALLOCATORS.add(Allocator(
    "layerif", allocate_layerif,
    description="influence-guided: blocks with lower influence (better trained) pruned less, about S x (1 +- eps)",
    declared=(
        Param("eps", 0.3, "targets span the global target x [1 - eps, 1 + eps]", low=0, high=1, open_high=True),
        Param("estimator", "datainf", "datainf (inverse-Hessian approximation) or identity (plain gradient dot product)",
              choices=ESTIMATORS),
        Param("aggregate", "positive-totals", "positive-totals (per training example over the validation set, positive "
              "totals summed: the paper), notebook (the non-positive totals summed: the authors' notebook), "
              "pairwise-positive (every positive pair summed) or all (every influence)", choices=AGGREGATES),
        Param("scope", "attention", "gradients of attention (q, k, v, o, the paper) or all linears", choices=SCOPES),
        Param("train", 24, "training windows for the influence (cost grows with train + val)", low=1, whole=True),
        Param("val", 8, "validation windows for the influence", low=1, whole=True),
        Param("seqlen", 64, "tokens per window (the paper uses up to 128)", low=2, whole=True),
    ),
    needs=frozenset({GRADIENTS}),
))
