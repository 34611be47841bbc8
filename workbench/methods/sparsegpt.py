"""SparseGPT (Frantar & Alistarh, arXiv 2301.00774; IST-DASLab/sparsegpt `sparsegpt.py`).

Optimal-brain-surgeon pruning with the damped inverse Hessian of the layer input, H = X X^T:
columns are processed in blocks of `blocksize`; inside a block the mask is chosen jointly over all rows
by the smallest w^2 / [H^-1]_cc^2 (adaptive mask selection; for N:M per group of M columns), each pruned
column's error is pushed onto the remaining columns of the block, and after the block its errors are
propagated to all later columns. The number of pruned weights per column block is set so the matrix
total is exactly round(numel * sparsity).

The squared output error comes for free: the OBS step of column i has error err_i = (w_i - q_i) / U_ii
(U the upper Cholesky factor of the damped inverse (H + lambda I)^-1), and sum(err^2) is exactly
tr(D (H + lambda I) D^T) with D = W - W_pruned over the live inputs, so tr(D H D^T) =
sum(err^2) - lambda ||D||^2 needs no product with H.
"""

from __future__ import annotations

import weakref

import torch

from workbench.infra.params import Param
from workbench.methods import LinearStats, Method, Pattern, Pruned, lowest_k, prune_count, METHODS


SUB_BLOCK = 32  # columns updated one by one before their errors reach the rest of the block at once
_last_factor: tuple = ()  # (weakref to the Hessian, percdamp, device, factor, dead inputs, damping)


def inverse_hessian_factor(hessian: torch.Tensor, device: torch.device, percdamp: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Upper Cholesky factor of the damped H^-1, the mask of dead inputs (diag H == 0) and the damping
    lambda added to the diagonal.

    The last result is reused while the same Hessian object is asked for again, so linears that read
    the same input (q, k, v; gate, up) factor it once.
    """
    global _last_factor
    if _last_factor and _last_factor[0]() is hessian and _last_factor[1:3] == (percdamp, device):
        return _last_factor[3:]
    H = hessian.to(device, torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    damp = percdamp * torch.mean(torch.diag(H)).item()
    H.diagonal().add_(damp)
    # H = R R^T with R upper (the Cholesky factor of H with rows and columns reversed, reversed back);
    # then H^-1 = R^-T R^-1, so the upper factor of H^-1 is R^-1: one factorization and one triangular
    # inverse instead of SparseGPT's cholesky, cholesky_inverse, cholesky (the same factor, half the work).
    R = torch.linalg.cholesky(H.flip(0, 1)).flip(0, 1)
    factor = upper_triangular_inverse(R)
    _last_factor = (weakref.ref(hessian), percdamp, device, factor, dead, damp)
    return factor, dead, damp


def upper_triangular_inverse(R: torch.Tensor, leaf: int = 128) -> torch.Tensor:
    """R^-1 for an upper-triangular R, by halves: [[A, B], [0, C]]^-1 = [[A^-1, -A^-1 B C^-1], [0, C^-1]].
    The products run as matrix multiplies, a third of the work of solving against the identity."""
    n = R.shape[0]
    if n <= leaf:
        return torch.linalg.solve_triangular(R, torch.eye(n, dtype=R.dtype, device=R.device), upper=True)
    h = n // 2
    A_inv, C_inv = upper_triangular_inverse(R[:h, :h], leaf), upper_triangular_inverse(R[h:, h:], leaf)
    out = torch.zeros_like(R)
    out[:h, :h], out[h:, h:] = A_inv, C_inv
    out[:h, h:] = -(A_inv @ R[:h, h:]) @ C_inv
    return out


def prune_sparsegpt(
    weight: torch.Tensor,
    stats: LinearStats,
    sparsity: float,
    pattern: Pattern | None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """Prune `weight` (out, in) with the OBS update; returns the updated, pruned copy."""
    return prune_sparsegpt_group([weight], stats, [sparsity], pattern, blocksize, percdamp)[0].weight


def prune_sparsegpt_group(
    weights: list[torch.Tensor],
    stats: LinearStats,
    sparsities: list[float],
    pattern: Pattern | None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> list[Pruned]:
    """Prune linears that share one input (and so one Hessian) in one column loop: the OBS update of a
    row depends only on that row and H^-1, so stacking rows gives each linear exactly what pruning it
    alone gives (its mask is still chosen within its own rows, with its own count). Each result carries
    its squared output error."""
    Hinv, dead, damp = inverse_hessian_factor(stats.hessian, weights[0].device, percdamp)
    # Work on the transpose (in, out): a column of W is a contiguous row here, so the per-column
    # updates below stream through memory instead of striding across it.
    Wt = torch.cat([w.to(torch.float32).t() for w in weights], dim=1)
    Wt[dead] = 0
    cols = Wt.shape[0]
    edges = [0]
    for w in weights:
        edges.append(edges[-1] + w.shape[0])
    # An N:M group must see every update from the columns before it: sub-blocks hold whole groups.
    sub = SUB_BLOCK if pattern is None else -(-SUB_BLOCK // pattern.m) * pattern.m
    err_sq = torch.zeros(Wt.shape[1], dtype=torch.float64, device=Wt.device)  # sum of err^2 per output
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = Wt[i1:i2]  # a view: updated in place
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if pattern is None:
            scores = W1 ** 2 / d.unsqueeze(1) ** 2
            for a, b, sparsity in zip(edges, edges[1:], sparsities):
                total = (b - a) * cols
                k = prune_count(total, sparsity * i2 / cols) - prune_count(total, sparsity * i1 / cols)
                if k > 0:
                    mask1[:, a:b] = lowest_k(scores[:, a:b].flatten(), k).view(i2 - i1, b - a)
        # err_i = (w_i - q_i) / d_i, with q_i = w_i where kept and 0 where pruned: w_i * (mask / d)
        gain = mask1 / d.unsqueeze(1)
        Err1 = torch.zeros_like(W1)
        w_rows, gain_rows, err_rows = W1.unbind(0), gain.unbind(0), Err1.unbind(0)
        width = i2 - i1
        for j1 in range(0, width, sub):
            # Column by column inside a sub-block of `sub` columns, then the sub-block's errors reach the
            # rest of the block in one product: the same updates as column by column over the whole
            # block, with far less memory traffic.
            j2 = min(j1 + sub, width)
            for i, h in zip(range(j1, j2), Hinv1[j1:j2, j1:j2].unbind(0)):  # h: row i of the sub-block
                if pattern is not None and i % pattern.m == 0:
                    group = W1[i : i + pattern.m] ** 2 / d[i : i + pattern.m].unsqueeze(1) ** 2
                    mask1.scatter_(0, i + torch.topk(group, pattern.n, dim=0, largest=False).indices, True)
                    gain[i : i + pattern.m] = mask1[i : i + pattern.m] / d[i : i + pattern.m].unsqueeze(1)
                err = torch.mul(w_rows[i], gain_rows[i], out=err_rows[i])
                W1[i:j2].addr_(h[i - j1 :], err, alpha=-1)
            if j2 < width:
                W1[j2:].sub_(Hinv1[j1:j2, j2:].t() @ Err1[j1:j2])
        W1.masked_fill_(mask1, 0)
        Wt[i2:].sub_(Hinv[i1:i2, i2:].t() @ Err1)
        err_sq += Err1.pow(2).sum(0)
    results = []
    for a, b, w in zip(edges, edges[1:], weights):
        pruned = Wt[:, a:b].t()
        diff = (w.to(torch.float32) - pruned).masked_fill_(dead, 0)
        error = err_sq[a:b].sum().item() - damp * diff.pow(2).sum().item()
        results.append(Pruned(pruned.to(w.dtype).contiguous(), max(error, 0.0)))
    return results


METHODS.add(Method("sparsegpt", prune_sparsegpt, needs_hessian=True, prune_group=prune_sparsegpt_group,
                   description="OBS update with damped Hessian inverse, adaptive mask per 128-column block",
                   declared=(Param("blocksize", 128, "columns whose mask is chosen jointly", low=1, whole=True),
                             Param("percdamp", 0.01, "damping added to the Hessian's diagonal, as a share of its mean",
                                   low=0, high=1))))
