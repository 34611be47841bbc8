"""Pruning methods. Each is one module here that registers a `Method` with `METHODS.add(Method(...))`.

A method maps one dense weight `W (out, in)` plus its calibration statistics to a pruned copy, for a
target sparsity (unstructured) or an N:M pattern. Methods are pure: same inputs, same output, so the
engine can always re-prune a linear from its dense weight with no cumulative damage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch

from workbench.infra.errors import WorkbenchError
from workbench.infra.params import Param, complete, defaults
from workbench.infra.registry import Registry


@dataclass(frozen=True)
class Pattern:
    """N:M semi-structured sparsity: in every group of `m` consecutive inputs, `n` weights are zero."""

    n: int
    m: int

    @property
    def sparsity(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(text: str | None, where: str = "pattern") -> Pattern | None:
    """`None`/"" for unstructured, else "N:M" with 0 < N < M."""
    if not text:
        return None
    try:
        n, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise WorkbenchError(where, f"{text!r} is not N:M (e.g. 2:4)") from None
    if not 0 < n < m:
        raise WorkbenchError(where, f"{text!r} needs 0 < N < M")
    return Pattern(n, m)


@dataclass(frozen=True)
class LinearStats:
    """Calibration statistics of one linear's input: squared L2 norm per input channel, token count,
    and the (unscaled) Hessian `X X^T` when captured."""

    sq_norm: torch.Tensor
    tokens: int
    hessian: torch.Tensor | None = None


PruneFn = Callable[..., torch.Tensor]


class Pruned(NamedTuple):
    """One result of a method's `prune_group`: the pruned weight and, when the method tracks it while
    pruning, its squared output error tr(D H D^T) over the calibration tokens (D = W - W_pruned)."""

    weight: torch.Tensor
    output_error: float | None = None


@dataclass(frozen=True)
class Method:
    """A registered method: `prune(weight, stats, sparsity, pattern, **params) -> pruned weight`, with its
    parameters `declared` (see `workbench.infra.params`)."""

    name: str
    prune: PruneFn
    needs_hessian: bool
    description: str
    declared: tuple[Param, ...] = ()
    # optional: prune several linears that read the same input in one pass, same weights as `prune`:
    # `prune_group(weights, stats, sparsities, pattern, **params) -> list[Pruned]`
    prune_group: Callable[..., list[Pruned]] | None = None

    @property
    def defaults(self) -> dict:
        """Every parameter's default, by name."""
        return defaults(self.declared)

    def params(self, given: dict, where: str = "method_params") -> dict:
        """`given` completed with defaults; unknown keys, wrong types and values out of range are refused."""
        return complete("method", self.name, self.declared, given, where)


METHODS: Registry[Method] = Registry("method", __name__)


def prune_count(numel: int, sparsity: float) -> int:
    """How many of `numel` weights a target sparsity removes (rounded to nearest)."""
    return int(round(numel * sparsity))


def lowest_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask (True = pruned) of the `round(in * sparsity)` lowest scores of every row."""
    k = prune_count(scores.shape[1], sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False, sorted=False).indices, True)
    return mask


def lowest_mask_matrix(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask (True = pruned) of the `round(numel * sparsity)` lowest scores of the whole matrix."""
    return lowest_k(scores.flatten(), prune_count(scores.numel(), sparsity)).view_as(scores)


def lowest_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the `k` lowest entries of a 1-D tensor; ties at the k-th value go to the lowest
    indices. On the CPU numpy's introselect finds the k-th value: torch.topk over a few hundred thousand
    scores took four times as long."""
    n = values.numel()
    if k <= 0 or k >= n:
        return torch.full((n,), k > 0, dtype=torch.bool, device=values.device)
    if values.device.type == "cpu":
        array = values.detach().to(torch.float32).numpy()
        kth = float(np.partition(array, k - 1)[k - 1])
        if not math.isnan(kth):
            mask = values < kth
            short = k - int(mask.sum())
            if short:
                mask[(values == kth).nonzero()[:short, 0]] = True
            return mask
    mask = torch.zeros(n, dtype=torch.bool, device=values.device)
    mask[torch.topk(values, k, largest=False, sorted=False).indices] = True
    return mask


def nm_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Boolean mask (True = pruned) of the `n` lowest scores in every group of `m` consecutive inputs."""
    out, cols = scores.shape
    if cols % pattern.m:
        raise WorkbenchError("pattern", f"{pattern} needs the input size to be a multiple of {pattern.m} (got {cols})")
    grouped = scores.reshape(out, cols // pattern.m, pattern.m)
    mask = torch.zeros_like(grouped, dtype=torch.bool)
    mask.scatter_(2, torch.topk(grouped, pattern.n, dim=2, largest=False, sorted=False).indices, True)
    return mask.view(out, cols)


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A copy of `weight` with the masked entries set to zero."""
    return weight.masked_fill(mask, 0)
