"""Magnitude pruning: score |W|. `scope="row"` (default) compares within each output row, like
Wanda's comparison group; `scope="matrix"` uses one threshold for the whole matrix (Wanda's
magnitude baseline). N:M patterns always compare within each group of M inputs of a row."""

from __future__ import annotations

import torch

from workbench.infra.params import Param
from workbench.methods import LinearStats, Method, Pattern, apply_mask, lowest_mask, lowest_mask_matrix, nm_mask, METHODS


def prune_magnitude(weight: torch.Tensor, stats: LinearStats | None, sparsity: float, pattern: Pattern | None, scope: str = "row") -> torch.Tensor:
    """Zero the smallest-|W| weights per row (or per matrix), or per N:M group."""
    scores = weight.abs()
    if pattern is not None:
        return apply_mask(weight, nm_mask(scores, pattern))
    return apply_mask(weight, lowest_mask(scores, sparsity) if scope == "row" else lowest_mask_matrix(scores, sparsity))


METHODS.add(Method("magnitude", prune_magnitude, needs_hessian=False,
                   description="|W|, per-row threshold (scope=matrix: one threshold per matrix)",
                   declared=(Param("scope", "row", "row: a threshold per output row; matrix: one per matrix",
                                   choices=("row", "matrix")),)))
