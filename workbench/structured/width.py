"""GLU width pruning (OptiPFair, arXiv 2512.22671; peremartra/optipfair `pruning/mlp_glu.py`).

In `down(act(gate x) * up x)` neuron i is row i of gate and up and column i of down; removing it removes
all three. Neuron importance is a small registry (`NEURON_SCORES`); the kept neurons are the top-k. The
target is an expansion ratio (intermediate / hidden), converted to a kept count as OptiPFair does,
optionally rounded to a multiple of a divisor. `random` is the control a score has to beat: a seeded
permutation independent of the weights.

The data-aware score's activation norm differs from OptiPFair's accumulation: OptiPFair's hook adds each
forward batch's norm ||X_d^i||_2 over that batch's tokens (`_accumulated_act_norms[layer] += norm`), so with
several batches it sums per-batch norms and its ranking depends on how the calibration set is batched;
here ||X_d^i||_2 is one norm over all calibration tokens (the square root of the summed squares kept in
the dense statistics), the formula OptiPFair's hook states (CFSP, Eq. 8). With one batch the two are equal.
OptiPFair also divides each PPM part by its max + 1e-8 where this code guards only a zero max.
"""

from __future__ import annotations

from typing import Callable

import torch

from workbench.domain.plan import WIDTH_DIVISORS
from workbench.infra.errors import WorkbenchError
from workbench.infra.registry import Registry


NeuronScore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
NEURON_SCORES: Registry[NeuronScore] = Registry("width score", "workbench.structured")
RANDOM_SEED = 0  # the `random` score's seed: the same neurons on every machine


def _peak_to_peak(w: torch.Tensor, dim: int) -> torch.Tensor:
    """max + |min| along `dim` (OptiPFair's "maximum absolute weight" spread)."""
    return w.amax(dim) + w.amin(dim).abs()


@NEURON_SCORES.register("ppm")
def ppm(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, down_sq_norm: torch.Tensor | None = None) -> torch.Tensor:
    """PPM/MAW, OptiPFair's default: peak-to-peak of the neuron's gate row plus that of its up row."""
    return _peak_to_peak(gate, 1) + _peak_to_peak(up, 1)


@NEURON_SCORES.register("vow")
def vow(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, down_sq_norm: torch.Tensor | None = None) -> torch.Tensor:
    """VOW: variance of the gate row plus variance of the up row."""
    return gate.var(1, unbiased=False) + up.var(1, unbiased=False)


@NEURON_SCORES.register("pon")
def pon(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, down_sq_norm: torch.Tensor | None = None) -> torch.Tensor:
    """PON: L1 norm of the gate row times L1 norm of the up row."""
    return gate.abs().sum(1) * up.abs().sum(1)


@NEURON_SCORES.register("data")
def data_ppm(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, down_sq_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Data-aware PPM: (PPM_gate / max + PPM_up / max + PPM_down / max) * ||X_down_i||_2, PPM_down over
    column i of down, ||X_down_i||_2 the norm of down_proj's input channel i over the calibration tokens."""
    if down_sq_norm is None:
        raise WorkbenchError("width score data", "needs calibration statistics (down_proj input norms): prune first")
    parts = (_peak_to_peak(gate, 1), _peak_to_peak(up, 1), _peak_to_peak(down, 0))
    spread = sum(p / p.max().clamp_min(torch.finfo(p.dtype).tiny) for p in parts)
    return spread * down_sq_norm.to(spread.dtype).sqrt()


def random_scores(intermediate: int, seed: int = RANDOM_SEED) -> torch.Tensor:
    """A seeded random permutation of 0..intermediate-1 as float32 (a CPU torch.Generator: the same on every
    machine; no ties)."""
    return torch.randperm(intermediate, generator=torch.Generator().manual_seed(seed)).to(torch.float32)


@NEURON_SCORES.register("random")
def random_choice(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, down_sq_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Random control, seeded and blind to the weights: `random_scores` with RANDOM_SEED (every block of
    one width keeps the same indices; neuron numbering is arbitrary per block, so the choice is still
    independent of each block's weights)."""
    return random_scores(gate.shape[0])


def neuron_scores(name: str, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                  down_sq_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Importance of each of the `intermediate` neurons (higher = kept first), in float32."""
    f = NEURON_SCORES.get(name, where="width score")
    return f(gate.to(torch.float32), up.to(torch.float32), down.to(torch.float32), down_sq_norm)


def kept_count(intermediate: int, hidden: int, ratio: float, divisor: int | None = None) -> int:
    """Neurons kept for an expansion ratio `ratio` = kept / hidden, as OptiPFair computes it:
    pct = (1 - ratio * hidden / intermediate) * 100, n_prune = int(pct / 100 * I) (at most I - 1, at least
    0), k = I - n_prune; with a divisor d, k = round(k / d) * d clipped to [1, I]."""
    if ratio <= 0:
        raise WorkbenchError("width ratio", f"must be > 0, got {ratio}")
    if divisor is not None and divisor not in WIDTH_DIVISORS:
        raise WorkbenchError("width divisor", f"must be one of {', '.join(map(str, WIDTH_DIVISORS))}, got {divisor}")
    pct = (1 - ratio * hidden / intermediate) * 100
    # OptiPFair truncates; the product is rounded first so that float noise (1 - 0.8 = 0.19999...) does
    # not keep one neuron more than the ratio says.
    n_prune = min(max(int(round(pct / 100 * intermediate, 9)), 0), intermediate - 1)
    k = intermediate - n_prune
    if divisor is not None:
        k = min(max(round(k / divisor) * divisor, 1), intermediate)
    return k


def kept_neurons(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` highest scores, in ascending index order (ties go to the lower index)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:k]).values
