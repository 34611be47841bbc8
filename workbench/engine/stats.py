"""Statistics of weights, activations and pruning error, per linear; the engine pools them per block.

- |W| summary of the dense weight: mean |W|, std of W, max |W|, kurtosis (Pearson, 3 for a Gaussian).
- Outlier ratio (OWL): share of Wanda scores |W| * ||X||_2 above M times the mean score (per block,
  the mean of all of the block's scores pooled).
- Activation norm: per input channel RMS sqrt(||X_j||^2 / tokens), summarised by mean and max.
- Relative reconstruction error ||(W - W_pruned) X|| / ||W X||, from the Hessian H = X X^T:
  sqrt(tr(D H D^T) / tr(W H W^T)) with D = W - W_pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.methods import LinearStats


@dataclass(frozen=True)
class WeightSummary:
    """Moments of a dense weight matrix."""

    numel: int
    mean_abs: float
    std: float
    max_abs: float
    kurtosis: float
    sum_sq: float  # for pooling std over a block
    sum_4: float   # for pooling kurtosis over a block (central moments around 0 are not used)


def weight_summary(weight: torch.Tensor) -> WeightSummary:
    """|W| moments of one matrix."""
    w = weight.detach().to(torch.float32)
    centered = w - w.mean()
    var = centered.pow(2).mean()
    kurt = (centered.pow(4).mean() / var.pow(2)).item() if var > 0 else 0.0
    return WeightSummary(
        numel=w.numel(),
        mean_abs=w.abs().mean().item(),
        std=var.sqrt().item(),
        max_abs=w.abs().max().item(),
        kurtosis=kurt,
        sum_sq=centered.pow(2).sum().item(),
        sum_4=centered.pow(4).sum().item(),
    )


def pool_weight_summaries(parts: list[WeightSummary]) -> WeightSummary:
    """One summary for several matrices (each centred on its own mean, which is ~0 for LLM weights)."""
    numel = sum(p.numel for p in parts)
    sum_sq = sum(p.sum_sq for p in parts)
    sum_4 = sum(p.sum_4 for p in parts)
    var = sum_sq / numel
    return WeightSummary(
        numel=numel,
        mean_abs=sum(p.mean_abs * p.numel for p in parts) / numel,
        std=var ** 0.5,
        max_abs=max(p.max_abs for p in parts),
        kurtosis=(sum_4 / numel) / var ** 2 if var > 0 else 0.0,
        sum_sq=sum_sq,
        sum_4=sum_4,
    )


def wanda_score_sum(weight: torch.Tensor, stats: LinearStats) -> float:
    """Sum of the Wanda scores of one linear."""
    norms = stats.sq_norm.to(weight.device, torch.float32).sqrt()
    return (weight.detach().abs().to(torch.float32).sum(0) * norms).sum().item()


def outlier_count(weight: torch.Tensor, stats: LinearStats, threshold: float) -> int:
    """How many Wanda scores of one linear exceed `threshold`."""
    norms = stats.sq_norm.to(weight.device, torch.float32).sqrt()
    scores = weight.detach().abs().to(torch.float32) * norms.unsqueeze(0)
    return int((scores > threshold).sum().item())


def activation_norm(stats: LinearStats) -> tuple[float, float]:
    """Mean and max over input channels of the per-channel RMS activation."""
    rms = (stats.sq_norm / max(stats.tokens, 1)).sqrt()
    return rms.mean().item(), rms.max().item()


def reconstruction_terms(dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor,
                         output_error: float | None = None) -> tuple[float, float]:
    """(tr(D H D^T), tr(W H W^T)): squared output error and squared output norm over the calibration set.
    A method that tracked the error while pruning passes it as `output_error`."""
    H = hessian.to(dense.device, torch.float32)
    W = dense.to(torch.float32)
    if output_error is None:
        D = W - pruned.to(device=dense.device, dtype=torch.float32)
        output_error = ((D @ H) * D).sum().item()
    return output_error, ((W @ H) * W).sum().item()


def relative_error(num: float, den: float) -> float:
    """sqrt(num / den), 0 when the output norm is 0."""
    return (max(num, 0.0) / den) ** 0.5 if den > 0 else 0.0
