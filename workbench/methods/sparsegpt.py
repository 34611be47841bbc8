"""SparseGPT (Frantar & Alistarh, arXiv 2301.00774; IST-DASLab/sparsegpt `sparsegpt.py`).

Optimal-brain-surgeon pruning with the damped inverse Hessian of the layer input, H = X X^T:
columns are processed in blocks of `blocksize`; inside a block the mask is chosen jointly over all rows
by the smallest w^2 / [H^-1]_cc^2 (adaptive mask selection; for N:M per group of M columns), each pruned
column's error is pushed onto the remaining columns of the block, and after the block its errors are
propagated to all later columns. The number of pruned weights per column block is set so the matrix
total is exactly round(numel * sparsity).
"""

from __future__ import annotations

import weakref

import torch

from workbench.methods import LinearStats, Method, Pattern, prune_count, register


_last_factor: tuple = ()  # (weakref to the Hessian, percdamp, device, factor, dead inputs)


def inverse_hessian_factor(hessian: torch.Tensor, device: torch.device, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of the damped H^-1 and the mask of dead inputs (diag H == 0).

    The last result is reused while the same Hessian object is asked for again, so linears that read
    the same input (q, k, v; gate, up) factor it once.
    """
    global _last_factor
    if _last_factor and _last_factor[0]() is hessian and _last_factor[1:3] == (percdamp, device):
        return _last_factor[3], _last_factor[4]
    H = hessian.to(device, torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    factor = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    _last_factor = (weakref.ref(hessian), percdamp, device, factor, dead)
    return factor, dead


def prune_sparsegpt(
    weight: torch.Tensor,
    stats: LinearStats,
    sparsity: float,
    pattern: Pattern | None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """Prune `weight` (out, in) with the OBS update; returns the updated, pruned copy."""
    Hinv, dead = inverse_hessian_factor(stats.hessian, weight.device, percdamp)
    W = weight.to(torch.float32).clone()
    W[:, dead] = 0
    rows, cols = W.shape
    total = rows * cols
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if pattern is None:
            k = prune_count(total, sparsity * i2 / cols) - prune_count(total, sparsity * i1 / cols)
            mask1 = torch.zeros(W1.numel(), dtype=torch.bool, device=W.device)
            if k > 0:
                scores = (W1 ** 2 / d.unsqueeze(0) ** 2).flatten()
                mask1[torch.topk(scores, k, largest=False, sorted=False).indices] = True
            mask1 = mask1.view_as(W1)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        # err_i = (w_i - q_i) / d_i, with q_i = w_i where kept and 0 where pruned: w_i * (mask / d)
        gain = mask1 / d.unsqueeze(0)
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            if pattern is not None and i % pattern.m == 0:
                group = W1[:, i : i + pattern.m] ** 2 / d[i : i + pattern.m].unsqueeze(0) ** 2
                mask1.scatter_(1, i + torch.topk(group, pattern.n, dim=1, largest=False).indices, True)
                gain[:, i : i + pattern.m] = mask1[:, i : i + pattern.m] / d[i : i + pattern.m].unsqueeze(0)
            err = torch.mul(W1[:, i], gain[:, i], out=Err1[:, i])
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)
        W1.masked_fill_(mask1, 0)
        W[:, i1:i2] = W1
        W[:, i2:].sub_(Err1 @ Hinv[i1:i2, i2:])
    return W.to(weight.dtype)


register(Method("sparsegpt", prune_sparsegpt, needs_hessian=True, defaults={"blocksize": 128, "percdamp": 0.01},
                description="OBS update with damped Hessian inverse, adaptive mask per 128-column block"))
