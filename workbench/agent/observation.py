"""What the agent observes per block (arXiv 2601.09694: P = {z_s, z_g, rho}, plus the outlier ratio and a
sensitivity scan when there is one): `z_s` from the current pruned weights at every step, `z_g` from
gradients measured once at the start point."""

from __future__ import annotations

import math

import torch

from workbench.agent.record import BlockObservation, zscores
from workbench.engine.facade import Engine

QUANTILE = 0.1  # the paper's low quantile of the non-zero Wanda scores
SAMPLE = 1 << 18  # about this many scores per block (a fixed stride through every linear): exact on small models


def wanda_low_quantiles(engine: Engine, q: float = QUANTILE) -> list[float]:
    """Per block, the q-quantile (the ceil(q n)-th smallest) of the non-zero Wanda scores |W| * ||X||_2 of
    the current weights, with the channel norms of the committed statistics (those they were pruned from)."""
    out = []
    for block in engine.linears:
        stride = max(1, sum(r.numel for r in block) // SAMPLE)
        parts = []
        for ref in block:
            weight = ref.module.weight.detach()
            norms = engine.statistics.channel_norms(ref).sq_norm.to(weight.device, torch.float32).sqrt()
            index = torch.arange(0, weight.numel(), stride, device=weight.device)
            scores = weight.reshape(-1)[index].abs().to(torch.float32) * norms[index % weight.shape[1]]
            parts.append(scores[scores > 0])
        scores = torch.cat(parts)
        out.append(scores.kthvalue(max(1, math.ceil(q * len(scores)))).values.item() if len(scores) else 0.0)
    return out


def observe_blocks(engine: Engine, targets: list[float], gradients: list[float], outliers: list[float],
                   sensitivity: list[float | None] | None) -> list[BlockObservation]:
    """Every block's observation under the engine's current weights (`targets`: their block targets)."""
    wanda = wanda_low_quantiles(engine)
    wanda_z, gradient_z = zscores(wanda), zscores(gradients)
    numels = engine.block_numels()
    return [BlockObservation(index=i, numel=numels[i], sparsity=targets[i], wanda_q10=wanda[i], wanda_z=wanda_z[i],
                             gradient=gradients[i], gradient_z=gradient_z[i], outlier_ratio=outliers[i],
                             sensitivity=sensitivity[i] if sensitivity else None)
            for i in range(len(targets))]
