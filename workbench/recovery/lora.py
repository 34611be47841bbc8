"""LoRA for healing, through peft: a masked layer whose delta keeps the cut, and the adapter kept apart.

peft's own `lora.Linear` adds B(A(x)) and never forms B A, so its merge would add a dense delta and undo
unstructured sparsity. `MaskedLoraLinear` (registered with peft as a custom layer) trains the delta
(B A) * scaling multiplied by the linear's keep mask, and merges exactly that: the merged weight has the
same zeros and computes what was trained. Its forward pass multiplies by W + (B A) * scaling * mask, formed
for the step and kept for the backward pass (as much memory as the weight, per linear): one product, as
the merged model's. The backward pass (`MaskedLoraProduct`) takes B's and A's gradients from the merged
weight's, masked in place, instead of through autograd's copies of weight-sized intermediates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as LoraLinear

from workbench.model.experts import RoutedExperts
from workbench.model.layout import LinearRef

ADAPTER = "default"


class MaskedLoraProduct(torch.autograd.Function):
    """x (W + (B A) * scaling * keep)^T + bias for a frozen W and bias; gradients for x, A and B."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, A, B, weight, bias, keep, scaling):
        delta = masked_delta(A, B, keep, scaling)
        merged = delta.to(torch.promote_types(delta.dtype, weight.dtype)).add_(weight)  # (bfloat16 under autocast)
        ctx.save_for_backward(x, A, B, merged, keep)
        ctx.scaling = scaling
        return F.linear(x.to(merged.dtype), merged, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        x, A, B, merged, keep = ctx.saved_tensors
        grad_x = grad @ merged.to(grad.dtype) if ctx.needs_input_grad[0] else None
        rows = grad.reshape(-1, grad.shape[-1])
        grad_merged = rows.t() @ x.reshape(-1, x.shape[-1]).to(rows.dtype)  # out x in
        if keep is not None:
            grad_merged.mul_(keep)
        grad_A = (B.t().to(grad_merged.dtype) @ grad_merged).mul_(ctx.scaling)
        grad_B = (grad_merged @ A.t().to(grad_merged.dtype)).mul_(ctx.scaling)
        return grad_x, grad_A, grad_B, None, None, None, None


def masked_delta(A: torch.Tensor, B: torch.Tensor, keep: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """(B A) * scaling * keep (keep None: no mask), scaled on B's side: one weight-sized allocation."""
    delta = (B * scaling) @ A
    return delta if keep is None else delta.mul_(keep)


class MaskedLoraLinear(LoraLinear):
    """A peft LoRA linear whose delta is multiplied by `keep` (None: no mask) before it is used or merged;
    it trains one adapter."""

    keep: torch.Tensor | None = None

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        delta = masked_delta(self.lora_A[adapter].weight, self.lora_B[adapter].weight, self.keep, self.scaling[adapter])
        return delta.to(self.get_base_layer().weight.dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        active = [a for a in self.active_adapters if a in self.lora_A]
        if self.disable_adapters or self.merged or not active:
            return self.base_layer(x, *args, **kwargs)
        (adapter,) = active
        base = self.get_base_layer()
        return MaskedLoraProduct.apply(x, self.lora_A[adapter].weight, self.lora_B[adapter].weight, base.weight,
                                       base.bias, self.keep, self.scaling[adapter]).to(x.dtype)


class PeftView(torch.nn.Module):
    """A model with unfused experts (`workbench.model.experts.unfuse`) as peft is shown it: without its
    transformers config, since peft maps targets named like expert projections (`...gate_proj`) of a
    mixture-of-experts model type onto the fused expert parameters, which the unfused model no longer has."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model


def peft_target(model: torch.nn.Module) -> torch.nn.Module:
    """The module handed to peft: the model itself, or its `PeftView` when it holds unfused experts."""
    return PeftView(model) if any(isinstance(m, RoutedExperts) for m in model.modules()) else model


def lora_config(model: torch.nn.Module, refs: list[LinearRef], rank: int, alpha: float, masked: bool) -> LoraConfig:
    """peft's config for LoRA on exactly `refs`, by their full names in the model as it runs now (dropped
    blocks renumber the ones after them)."""
    names = {id(module): name for name, module in model.named_modules()}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                        target_modules=[names[id(ref.module)] for ref in refs])
    if masked:
        config._register_custom_module({torch.nn.Linear: MaskedLoraLinear})
    return config


def attach(model: torch.nn.Module, refs: list[LinearRef], rank: int, alpha: float, seed: int,
           keep: dict[str, torch.Tensor | None] | None = None):
    """Wrap `refs` in LoRA layers (masked by `keep` when given); the peft model. A starts from a
    generator seeded with `seed`, B at zero (peft's default): the model is unchanged until it trains."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' renamed checkpointing flag, read by peft
        torch.manual_seed(seed)
        target = peft_target(model)
        peft_model = get_peft_model(target, lora_config(target, refs, rank, alpha, masked=keep is not None))
    if keep is not None:
        wrapped = wrappers(model)
        for ref in refs:
            mask = keep.get(ref.name)
            wrapped[id(ref.module)].keep = None if mask is None else mask.to(ref.module.weight.device)
    return peft_model


def wrappers(model: torch.nn.Module) -> dict[int, LoraLinear]:
    """The LoRA layers peft put around linears, by the id of the linear each wraps (one pass over the model)."""
    return {id(m.get_base_layer()): m for m in model.modules() if isinstance(m, LoraLinear)}


@dataclass
class LoraFactors:
    """One linear's trained adapter: A (rank x in), B (out x rank) and the scaling alpha / rank."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float


def factors(model: torch.nn.Module, refs: list[LinearRef]) -> dict[str, LoraFactors]:
    """Every wrapped linear's adapter, copied out (detached, on the CPU)."""
    out, wrapped = {}, wrappers(model)
    for ref in refs:
        w = wrapped[id(ref.module)]
        out[ref.name] = LoraFactors(w.lora_A[ADAPTER].weight.detach().cpu().clone(),
                                    w.lora_B[ADAPTER].weight.detach().cpu().clone(), float(w.scaling[ADAPTER]))
    return out


class AdapterHooks:
    """The adapter kept apart from the base: each linear's output plus scaling * B(A(x)), as forward hooks
    on the unchanged (sparse) linears. `enabled` off runs the base alone (the dense reference's probes)."""

    def __init__(self, refs: list[LinearRef], adapters: dict[str, LoraFactors]):
        self.enabled = True
        self._handles = []
        for ref in refs:
            factors_ = adapters[ref.name]
            device = ref.module.weight.device
            A, B = factors_.A.to(device), factors_.B.to(device)
            self._handles.append(ref.module.register_forward_hook(self._hook(A, B, factors_.scaling)))

    def _hook(self, A: torch.Tensor, B: torch.Tensor, scaling: float):
        def add_adapter(module, args, output):
            if not self.enabled:
                return output
            x = args[0]
            return output + (F.linear(F.linear(x.to(A.dtype), A), B) * scaling).to(output.dtype)
        return add_adapter

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
