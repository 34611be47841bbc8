"""Depth pruning: which blocks to drop.

- Block influence (ShortGPT, arXiv 2403.03853): BI_i = 1 - mean cos(h_in, h_out) over every calibration
  token position; the blocks with the lowest BI change their input least and are dropped first. A token
  whose cosine is undefined (a zero vector) counts 0.5, as a public reimplementation does.
- Angular distance (Gromov et al., arXiv 2403.17887): d(l, l+n) = arccos(cos(x_T^l, x_T^(l+n))) / pi on
  the last token T of each sample, averaged over samples; the run l..l+n-1 with the smallest d is dropped.

`DepthStatistics` accumulates both from one dense pass, block by block (see `workbench.engine.capture`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from workbench.domain.plan import drop_problem
from workbench.engine.capture import block0_inputs
from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.model.layout import blocks_of


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per row, 0.5 where a vector is zero (undefined)."""
    a, b = a.to(torch.float32), b.to(torch.float32)
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float32).tiny), torch.full_like(num, 0.5))


@dataclass
class DepthStatistics:
    """Running sums for block influence, and the last-token hidden states entering every block (and
    leaving the last one) for the angular distance."""

    cos_sum: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    last_tokens: list[list[torch.Tensor]] = field(default_factory=list)  # per boundary l (0..L), per micro-batch

    def add(self, block: int, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        """One micro-batch (batch, tokens, hidden) through block `block`."""
        while len(self.cos_sum) <= block:
            self.cos_sum.append(0.0)
            self.tokens.append(0)
        while len(self.last_tokens) <= block + 1:
            self.last_tokens.append([])
        cos = _cosine(h_in.reshape(-1, h_in.shape[-1]), h_out.reshape(-1, h_out.shape[-1]))
        self.cos_sum[block] += cos.sum().item()
        self.tokens[block] += cos.numel()
        if block == 0:  # later blocks' inputs are the outputs before them
            self.last_tokens[0].append(h_in[:, -1].detach().to("cpu", torch.float32))
        self.last_tokens[block + 1].append(h_out[:, -1].detach().to("cpu", torch.float32))

    def block_influence(self) -> list[float]:
        """BI of every block."""
        return [1 - s / n for s, n in zip(self.cos_sum, self.tokens)]

    def angular_distance(self, n: int) -> list[float]:
        """d(l, l+n) for every start l with l + n <= L, averaged over samples."""
        states = [torch.cat(parts) for parts in self.last_tokens]
        blocks = len(states) - 1
        if not 1 <= n <= blocks:
            raise WorkbenchError("--drop-blocks", f"must be in 1..{blocks}, got {n}")
        out = []
        for start in range(blocks - n + 1):
            cos = _cosine(states[start], states[start + n]).clamp(-1, 1)
            out.append((torch.arccos(cos) / math.pi).mean().item())
        return out


def collect(model: torch.nn.Module, ids: torch.Tensor, device: torch.device, progress=None, cancel=None) -> DepthStatistics:
    """Depth statistics of `model` as it runs now (the caller swaps in the dense model), one block at a
    time over the calibration windows."""
    stats = DepthStatistics()
    layers = blocks_of(model)
    with torch.no_grad():
        hidden, kwargs = block0_inputs(model, ids, device)
        for i, block in enumerate(layers):
            if cancel is not None and cancel():
                raise Cancelled()
            if progress:
                progress(f"block scores: block {i}/{len(layers)}", i / len(layers))
            outputs = []
            for h, kw in zip(hidden, kwargs):
                out = block(h, **kw)
                out = out[0] if isinstance(out, tuple) else out
                stats.add(i, h, out)
                outputs.append(out)
            hidden = outputs
    return stats


def drop_by_influence(influence: list[float], n: int) -> list[int]:
    """The `n` blocks of lowest block influence (ties: the later block first, then by index), sorted."""
    if not 0 <= n < len(influence):
        raise WorkbenchError("--drop-blocks", f"must be in 0..{len(influence) - 1}, got {n}")
    order = sorted(range(len(influence)), key=lambda i: (influence[i], -i))
    return sorted(order[:n])


def drop_by_angular(stats: DepthStatistics, n: int) -> list[int]:
    """The contiguous run of `n` blocks whose input and output are closest in angle (first on ties)."""
    if n == 0:
        return []
    distances = stats.angular_distance(n)
    start = min(range(len(distances)), key=lambda i: distances[i])
    return list(range(start, start + n))


def parse_drop(text: str, blocks: int) -> list[int]:
    """A hand-picked list such as "22,23" (the block numbers as the user sees them), sorted."""
    try:
        picked = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise WorkbenchError("--drop-by", f"expected bi, angular or block numbers such as 22,23, got {text!r}") from None
    problem = drop_problem(picked, blocks)
    if problem:
        raise WorkbenchError("--drop-by", problem)
    return sorted(picked)
