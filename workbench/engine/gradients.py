"""Per-example gradients of each block's linear weights, one block at a time, and LayerIF's per-block
influence scores built from them (Askari et al., arXiv 2505.23811; code HadiAskari/Expert_Allocation).

How the gradients are taken, exactly and with one block's weights in use at a time:

1. A no-grad forward keeps the hidden states entering every block, for every example, on the CPU.
2. The head (final norm, lm_head) gives the gradient of the summed per-example losses with respect to
   the last block's output. An example's loss reads only its own activations, so row i of that gradient
   is d loss_i / d h_i; the head runs one example at a time, so only one example's logits (seqlen x
   vocabulary, with their softmax and its gradient) are alive at once.
3. Backward sweep, last block first: block b runs again from its kept input, with grad on the input
   only, and autograd against the incoming gradient gives the gradient for block b-1. Hooks on the
   chosen linears keep each one's input x and output gradient delta; example i's weight gradient is
   sum_t delta_it x_it^T (per-example gradients from one batched backward, as Opacus does).

The loss is the causal-LM loss, labels = input ids, mean over an example's tokens (batch size 1 in the
paper). Gradients are of the linears' weights (Llama projections have no biases). Cost: about two forwards and one backward per example. Memory: the kept hidden states (examples
x seqlen x hidden x blocks, on the CPU) and one block's per-example gradients (examples x its chosen
weights, on the device). An offloaded block visits the device only while its gradients are taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from workbench.engine.capture import MICRO_BATCH, block0_inputs
from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.model.experts import moe_block
from workbench.model.layout import blocks_of, LINEAR_PATHS

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]

# Which linears of a block get gradients: the paper's self-attention projections, or all seven.
SCOPES: dict[str, tuple[str, ...]] = {"attention": ("q", "k", "v", "o"), "all": tuple(LINEAR_PATHS)}


def scope_kinds(scope: str) -> tuple[str, ...]:
    """The linear kinds of `scope`, or a one-line error."""
    if scope not in SCOPES:
        raise WorkbenchError("scope", f"unknown scope {scope!r} (use {', '.join(SCOPES)})")
    return SCOPES[scope]


def _check(cancel: Cancel | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled()


def _lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-example causal-LM loss (mean over the predicted tokens), summed over the examples."""
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    return per_token.view(len(ids), -1).mean(1).sum()


class _WeightGradients:
    """Hooks on a block's chosen linears that record each example's weight gradient in a backward."""

    def __init__(self, block: torch.nn.Module, kinds: tuple[str, ...]):
        if moe_block(block) is not None and set(kinds) - set(SCOPES["attention"]):
            raise WorkbenchError("allocator_params.scope", "scope all on a mixture of experts: an example's tokens spread "
                                                           "over the experts, so per-example gradients cover attention only")
        self.linears = [block.get_submodule(LINEAR_PATHS[k]) for k in kinds]
        self.inputs: dict[int, torch.Tensor] = {}
        self.deltas: dict[int, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._forward(n)) for n, m in enumerate(self.linears)]

    def _forward(self, n: int):
        def hook(module, args, output):
            self.inputs[n] = args[0].detach()
            output.register_hook(lambda grad: self.deltas.__setitem__(n, grad.detach()))
        return hook

    def per_example(self) -> list[torch.Tensor]:
        """Per linear, examples x weights: sum_t delta_t x_t^T, flattened (float32)."""
        grads = [torch.einsum("bto,bti->boi", self.deltas[n].float(), self.inputs[n].float()).flatten(1)
                 for n in range(len(self.linears))]
        self.inputs.clear()
        self.deltas.clear()
        return grads

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def block_gradients(model: torch.nn.Module, ids: torch.Tensor, device: torch.device, kinds: tuple[str, ...],
                    progress: Progress | None = None, cancel: Cancel | None = None) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """Yield (block index, per linear of `kinds` an examples x weights matrix): per-example gradients of
    the LM loss with respect to the weights of each block's linears, last block first (see the module
    docstring)."""
    layers = blocks_of(model)
    steps = len(layers) + 1
    with torch.no_grad():
        hidden, kwargs = block0_inputs(model, ids, device)
        kept: list[list[torch.Tensor]] = []
        for i, block in enumerate(layers):
            _check(cancel)
            if progress:
                progress(f"gradients: forward through block {i}/{len(layers)}", i / len(layers) / steps)
            kept.append([h.cpu() for h in hidden])
            hidden = [block(h, **kw) for h, kw in zip(hidden, kwargs)]
    upstream = []
    with torch.enable_grad():
        for start, h in zip(range(0, len(ids), MICRO_BATCH), hidden):
            rows = []
            for r in range(len(h)):  # one example's logits at a time: its loss reads only its own row
                row = h[r : r + 1].detach().requires_grad_(True)
                loss = _lm_loss(model.lm_head(model.model.norm(row)), ids[start + r : start + r + 1].to(device))
                rows.append(torch.autograd.grad(loss, row)[0])
            upstream.append(torch.cat(rows))
    for b in reversed(range(len(layers))):
        _check(cancel)
        if progress:
            progress(f"gradients: block {b}", (len(layers) - b) / steps)
        block = layers[b]
        home = next(block.parameters()).device
        block.to(device)  # an offloaded block: here only while its gradients are taken
        recorder = _WeightGradients(block, kinds)
        rows = []
        try:
            with torch.enable_grad():
                for k, (h, kw) in enumerate(zip(kept[b], kwargs)):
                    h = h.to(device).requires_grad_(True)
                    out = block.forward(h, **kw)  # not __call__: offload hooks would move it before the backward
                    upstream[k] = torch.autograd.grad(out, h, upstream[k])[0]
                    rows.append(recorder.per_example())
        finally:
            recorder.remove()
            block.to(home)
        kept[b] = []
        yield b, [torch.cat(per_linear) for per_linear in zip(*rows)]


def mean_abs_gradients(model: torch.nn.Module, ids: torch.Tensor, device: torch.device, scope: str = "attention",
                       progress: Progress | None = None, cancel: Cancel | None = None) -> list[float]:
    """Per block, the mean |gradient| of the LM loss over the examples `ids` (rows of token ids) and over
    the weights of the block's linears in `scope` (attention: q, k, v, o; all: the seven), each example's
    gradient taken on its own. The model is used as it is (dense or pruned)."""
    kinds = scope_kinds(scope)
    means = [0.0] * len(blocks_of(model))
    for b, grads in block_gradients(model, ids, device, kinds, progress, cancel):
        means[b] = sum(g.abs().sum().item() for g in grads) / sum(g.numel() for g in grads)
    if progress:
        progress("gradients done", 1.0)
    return means


# ----- influence (LayerIF) ------------------------------------------------------------------------------
@dataclass
class LinearGrams:
    """Inner products of one linear's per-example weight gradients: training x training (`train`, g_i . g_k)
    and validation x training (`cross`, v_j . g_i), in float64 on the CPU; `numel` weights."""

    train: torch.Tensor
    cross: torch.Tensor
    numel: int


def gradient_grams(model: torch.nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor, device: torch.device,
                   scope: str = "attention", progress: Progress | None = None,
                   cancel: Cancel | None = None) -> list[list[LinearGrams]]:
    """Per block, per linear of `scope`: the Gram matrices of the per-example gradients on the training
    and validation examples. Both estimators need nothing else, so one block's gradients at a time suffice."""
    n = len(train_ids)
    grams: list[list[LinearGrams]] = [[] for _ in blocks_of(model)]
    for b, grads in block_gradients(model, torch.cat([train_ids, val_ids]), device, scope_kinds(scope), progress, cancel):
        grams[b] = [LinearGrams((g[:n] @ g[:n].T).double().cpu(), (g[n:] @ g[:n].T).double().cpu(), g.shape[1])
                    for g in grads]
    if progress:
        progress("gradients done", 1.0)
    return grams


def datainf(grams: LinearGrams, damping: float = 10.0) -> torch.Tensor:
    """DataInf influence of training example i on validation example j (validation x training):
    I_ji = -(H^-1 v_j) . g_i with H^-1 v ~ 1/(n lam) sum_i [v - (v . g_i) / (lam + ||g_i||^2) g_i] and
    lam = mean_i mean(g_i^2) / damping, one lam per linear (a weight matrix is DataInf's "layer", as in the
    LayerIF code). In Gram terms: I = -(n C - (C / (lam + diag K)) K) / (n lam), C = cross, K = train."""
    norms = grams.train.diagonal()
    n = len(norms)
    lam = norms.mean() / grams.numel / damping
    return -(n * grams.cross - (grams.cross / (lam + norms)) @ grams.train) / (n * lam)


def dot_product(grams: LinearGrams) -> torch.Tensor:
    """The "identity" estimator (H = I): I_ji = -v_j . g_i."""
    return -grams.cross


ESTIMATORS = {"datainf": datainf, "identity": dot_product}


def influence_matrix(block: list[LinearGrams], estimator: str = "datainf") -> torch.Tensor:
    """A block's influence matrix (validation x training): the influences of its linears added up, as the
    LayerIF code adds them over a layer's weight matrices."""
    return sum(ESTIMATORS[estimator](g) for g in block)


# A block's score from its influence matrix I (validation x training); a lower score marks a better-trained
# block. I_ji > 0: upweighting training example i would raise validation example j's loss.
def positive_totals(influence: torch.Tensor) -> float:
    """The paper's "cumulative positive influence": each training example's influence summed over the
    validation set, then the positive totals summed."""
    return influence.sum(0).clamp(min=0).sum().item()


def notebook_totals(influence: torch.Tensor) -> float:
    """The authors' notebook (`expert_allocator.ipynb`, the cell titled "Only positive IF Values"): each
    training example's influence summed over the validation set, the positive totals deleted, the rest
    (<= 0) summed."""
    return influence.sum(0).clamp(max=0).sum().item()


def pairwise_positive(influence: torch.Tensor) -> float:
    """Every (validation, training) pair clamped at 0, then summed: how spread out the influences are, not
    the sign of any example's total."""
    return influence.clamp(min=0).sum().item()


def all_influences(influence: torch.Tensor) -> float:
    """Every value summed (the notebook's "All IF values" cell)."""
    return influence.sum().item()


AGGREGATES = {"positive-totals": positive_totals, "notebook": notebook_totals,
              "pairwise-positive": pairwise_positive, "all": all_influences}


def block_influence(grams: list[list[LinearGrams]], estimator: str = "datainf",
                    aggregate: str = "positive-totals") -> list[float]:
    """One score per block: its influence matrix, aggregated."""
    return [AGGREGATES[aggregate](influence_matrix(block, estimator)) for block in grams]
