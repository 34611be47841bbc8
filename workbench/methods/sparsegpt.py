"""SparseGPT (Frantar & Alistarh, arXiv 2301.00774; IST-DASLab/sparsegpt `sparsegpt.py`).

Optimal-brain-surgeon pruning with the damped inverse Hessian of the layer input, H = X X^T:
columns are processed in blocks of `blocksize`; inside a block the mask is chosen jointly over all rows
by the smallest w^2 / [H^-1]_cc^2 (adaptive mask selection; for N:M per group of M columns), each pruned
column's error is pushed onto the remaining columns of the block, and after the block its errors are
propagated to all later columns. The number of pruned weights per column block is set so the matrix
total is exactly round(numel * sparsity).
"""

from __future__ import annotations

import torch

from workbench.methods import LinearStats, Method, Pattern, prune_count, register


def inverse_hessian_factor(hessian: torch.Tensor, weight: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of the damped H^-1, and `weight` with dead inputs (diag H == 0) zeroed."""
    H = hessian.to(weight.device, torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    weight = weight.clone()
    weight[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    return torch.linalg.cholesky(Hinv, upper=True), weight


def prune_sparsegpt(
    weight: torch.Tensor,
    stats: LinearStats,
    sparsity: float,
    pattern: Pattern | None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """Prune `weight` (out, in) with the OBS update; returns the updated, pruned copy."""
    W = weight.to(torch.float32)
    Hinv, W = inverse_hessian_factor(stats.hessian, W, percdamp)
    rows, cols = W.shape
    total = rows * cols
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        Err1 = torch.zeros_like(W1)
        if pattern is None:
            k = prune_count(total, sparsity * i2 / cols) - prune_count(total, sparsity * i1 / cols)
            mask1 = torch.zeros(W1.numel(), dtype=torch.bool, device=W.device)
            if k > 0:
                scores = (W1 ** 2 / d.unsqueeze(0) ** 2).flatten()
                mask1[torch.topk(scores, k, largest=False, sorted=False).indices] = True
            mask1 = mask1.view_as(W1)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if pattern is not None and i % pattern.m == 0:
                group = W1[:, i : i + pattern.m] ** 2 / d[i : i + pattern.m].unsqueeze(0) ** 2
                mask1.scatter_(1, i + torch.topk(group, pattern.n, dim=1, largest=False).indices, True)
            w = W1[:, i]
            err = torch.where(mask1[:, i], w, torch.zeros_like(w)) / d[i]
            W1[:, i:].sub_(err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0))
            W1[:, i].masked_fill_(mask1[:, i], 0)
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:].sub_(Err1 @ Hinv[i1:i2, i2:])
    return W.to(weight.dtype)


register(Method("sparsegpt", prune_sparsegpt, needs_hessian=True, defaults={"blocksize": 128, "percdamp": 0.01},
                description="OBS update with damped Hessian inverse, adaptive mask per 128-column block"))
