"""Wanda (Sun et al., arXiv 2306.11695): score S_ij = |W_ij| * ||X_j||_2, where ||X_j||_2 is the L2 norm
of input channel j over all calibration tokens. Comparison group: each output row (or each group of
M inputs of a row for N:M)."""

from __future__ import annotations

import torch

from workbench.methods import LinearStats, Method, Pattern, apply_mask, lowest_mask, nm_mask, METHODS


def wanda_scores(weight: torch.Tensor, stats: LinearStats) -> torch.Tensor:
    """|W| * ||X_j||_2 per weight."""
    return weight.abs() * stats.sq_norm.to(weight.device, torch.float32).sqrt().unsqueeze(0)


def prune_wanda(weight: torch.Tensor, stats: LinearStats, sparsity: float, pattern: Pattern | None) -> torch.Tensor:
    """Zero the lowest Wanda scores of every row (or of every N:M group)."""
    scores = wanda_scores(weight, stats)
    mask = nm_mask(scores, pattern) if pattern is not None else lowest_mask(scores, sparsity)
    return apply_mask(weight, mask)


METHODS.add(Method("wanda", prune_wanda, needs_hessian=False,
                description="|W| * ||X||_2, per output row"))
