"""Mixture-of-experts blocks, one module per expert.

transformers 5 stores the experts of Qwen2/3-MoE, OLMoE, Mixtral, Granite-MoE and others fused: in the
block's MoE module (`mlp`, or `block_sparse_moe` for Granite-MoE) an `experts` module holds
`gate_up_proj` [E, 2I, H] (each expert's gate rows first, then its up rows) and `down_proj` [E, H, I],
and is called with the hidden states and the router's top-k indices and weights. The router (`gate`, or
`router` for Granite-MoE) is a plain weight [E, H]; Qwen2-MoE adds a `shared_expert` MLP and its
`shared_expert_gate`, a Linear(H, 1).

`unfuse` replaces each fused `experts` module by `RoutedExperts`: one `Expert` (gate_proj, up_proj,
down_proj, all `nn.Linear`) per expert, whose weights are views of the fused tensors (no copy), run the
way transformers' eager implementation runs them (each expert's tokens gathered once, its output scaled
by the router weight). The engine then sees every expert's projections as linears named
`layers.{i}.{moe}.experts.{e}.{gate,up,down}_proj`, and a pre-hook on a projection sees exactly the
tokens routed to its expert. `fused` puts fused modules back for saving. Only the layout the transformers
decorator declares as concatenated gate-then-up, not transposed, with the default gate (act(gate) * up)
and no post-expert norm is read; anything else is refused naming the class and what differs.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from workbench.infra.errors import WorkbenchError

MOE_PATHS = ("mlp", "block_sparse_moe")  # where a block keeps its MoE module
ROUTER_NAMES = ("gate", "router")  # the router inside it
SHARED = "shared_expert"  # Qwen2-MoE's always-on expert (a plain GLU MLP)
EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts")  # config fields, first found


class Expert(nn.Module):
    """One expert's GLU MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, gate_proj: nn.Linear, up_proj: nn.Linear, down_proj: nn.Linear):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj


class RoutedExperts(nn.ModuleList):
    """The experts of one block, one `Expert` each (so expert e's projections are `experts.{e}.gate_proj`...,
    as in per-expert checkpoints); `ids[j]` is the original index of expert j (experts may be dropped).
    Called like the fused module it replaces: (hidden_states [T, H], top_k_index [T, k], top_k_weights
    [T, k]) -> [T, H]."""

    def __init__(self, experts: list[Expert], act_fn, fused: nn.Module):
        super().__init__(experts)
        self.ids = list(range(len(experts)))
        # Not submodules (a ModuleList counts its modules): the activation, the fused module's class and
        # settings for `fuse`, and an observer `(position, router weights, outputs)` of each expert's
        # tokens (`workbench.structured.experts` scores experts with it).
        object.__setattr__(self, "act_fn", act_fn)
        object.__setattr__(self, "template", fused)
        object.__setattr__(self, "observer", None)

    def set_experts(self, experts: list[Expert], ids: list[int]) -> None:
        """Run these experts (original indices `ids`) in this order; the router must route to them."""
        self._modules.clear()
        for position, expert in enumerate(experts):
            self.add_module(str(position), expert)
        self.ids = list(ids)

    @property
    def num_experts(self) -> int:
        return len(self)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            hit = torch.bincount(top_k_index.reshape(-1), minlength=len(self)).nonzero().flatten().tolist()
        for e in hit:
            if e >= len(self):  # a padding index some routers use for "no expert"
                continue
            token, slot = torch.where(top_k_index == e)
            expert = self[e]
            x = hidden_states[token]
            y = expert.down_proj(self.act_fn(expert.gate_proj(x)) * expert.up_proj(x))
            if self.observer is not None:
                self.observer(e, top_k_weights[token, slot], y)
            out.index_add_(0, token, (y * top_k_weights[token, slot, None]).to(out.dtype))
        return out


@dataclass(frozen=True)
class MoeBlock:
    """Where one decoder block keeps its experts: `path` of the MoE module ("mlp"), its router's path
    ("mlp.gate"), the shared expert's path when there is one, and top-k."""

    path: str
    router: str
    shared: str | None
    top_k: int


def moe_block(block: nn.Module) -> MoeBlock | None:
    """The MoE layout of a decoder block, or None for a dense MLP block."""
    for path in MOE_PATHS:
        moe = getattr(block, path, None)
        experts = getattr(moe, "experts", None)
        if experts is None or not (is_per_expert(experts) or _is_fused(experts)):
            continue
        router = next((name for name in ROUTER_NAMES if isinstance(getattr(moe, name, None), nn.Module)), None)
        if router is None:
            raise WorkbenchError(f"MoE module {type(moe).__name__}", f"no router found (expected one of {', '.join(ROUTER_NAMES)})")
        top_k = getattr(getattr(moe, router), "top_k", None) or getattr(moe, "top_k", None)
        if not isinstance(top_k, int):
            raise WorkbenchError(f"MoE module {type(moe).__name__}", "no top_k on its router")
        shared = f"{path}.{SHARED}" if isinstance(getattr(moe, SHARED, None), nn.Module) else None
        return MoeBlock(path, f"{path}.{router}", shared, top_k)
    return None


def is_per_expert(experts: nn.Module) -> bool:
    """Experts held one module each (`RoutedExperts`, or a checkpoint's own list of GLU MLPs, as older
    transformers and remote code keep them): a ModuleList whose items have gate, up and down projections."""
    return isinstance(experts, nn.ModuleList) and len(experts) > 0 and all(
        all(isinstance(getattr(x, f"{k}_proj", None), nn.Linear) for k in ("gate", "up", "down")) for x in experts)


def _is_fused(experts: nn.Module) -> bool:
    gate_up, down = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
    return isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor) and gate_up.dim() == 3


def check_fused(experts: nn.Module, where: str) -> None:
    """Refuse fused experts whose layout `unfuse` would misread, naming the class and what differs."""
    from transformers.integrations.moe import _default_apply_gate

    cls = type(experts).__name__
    flags = {"is_concatenated": True, "is_transposed": False, "has_gate": True, "has_post_expert_norm": False}
    for flag, wanted in flags.items():
        if getattr(experts, flag, wanted) != wanted:
            raise WorkbenchError(where, f"unsupported experts layout {cls}: {flag}={not wanted} (workbench reads "
                                        "concatenated gate-then-up, untransposed experts)")
    if getattr(type(experts), "_apply_gate", _default_apply_gate) is not _default_apply_gate:
        raise WorkbenchError(where, f"unsupported experts layout {cls}: a custom gate function (workbench reads act(gate) * up)")
    E, rows, H = experts.gate_up_proj.shape
    if rows % 2 or tuple(experts.down_proj.shape) != (E, H, rows // 2):
        raise WorkbenchError(where, f"unsupported experts layout {cls}: gate_up_proj {tuple(experts.gate_up_proj.shape)} "
                                    f"and down_proj {tuple(experts.down_proj.shape)} are not [E, 2I, H] and [E, H, I]")


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear around existing tensors (views stay views: nothing is copied)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


def unfuse(model: nn.Module) -> int:
    """Replace every block's fused experts by `RoutedExperts` over views of the same tensors; the number of
    blocks changed (0 for a dense model)."""
    changed = 0
    for i, block in enumerate(model.model.layers):
        layout = moe_block(block)
        if layout is None:
            continue
        moe = block.get_submodule(layout.path)
        fused = moe.experts
        if is_per_expert(fused):  # already one module per expert
            continue
        check_fused(fused, f"block {i}, {layout.path}.experts")
        inter = fused.gate_up_proj.shape[1] // 2
        gate_up_bias = getattr(fused, "gate_up_proj_bias", None) if getattr(fused, "has_bias", False) else None
        down_bias = getattr(fused, "down_proj_bias", None) if getattr(fused, "has_bias", False) else None
        experts = []
        for e in range(fused.gate_up_proj.shape[0]):
            gate_up = fused.gate_up_proj[e]
            experts.append(Expert(
                _linear(gate_up[:inter], None if gate_up_bias is None else gate_up_bias[e, :inter]),
                _linear(gate_up[inter:], None if gate_up_bias is None else gate_up_bias[e, inter:]),
                _linear(fused.down_proj[e], None if down_bias is None else down_bias[e]),
            ))
        moe.experts = RoutedExperts(experts, fused.act_fn, fused)
        changed += 1
    return changed


def fuse(routed: RoutedExperts) -> nn.Module:
    """A fused experts module of the original class and settings holding the experts' current weights
    (copies) and count."""
    experts = list(routed)
    fused = copy.copy(routed.template)
    fused._parameters, fused._buffers, fused._modules = {}, dict(fused._buffers), dict(fused._modules)
    stack = lambda tensors: nn.Parameter(torch.stack(tensors), requires_grad=False)  # noqa: E731
    fused.gate_up_proj = stack([torch.cat([x.gate_proj.weight, x.up_proj.weight]) for x in experts])
    fused.down_proj = stack([x.down_proj.weight for x in experts])
    if experts[0].gate_proj.bias is not None:
        fused.gate_up_proj_bias = stack([torch.cat([x.gate_proj.bias, x.up_proj.bias]) for x in experts])
        fused.down_proj_bias = stack([x.down_proj.bias for x in experts])
    fused.num_experts = len(experts)
    return fused


@contextlib.contextmanager
def fused(model: nn.Module):
    """Inside, every block holds fused experts of its original class again (for `save_pretrained`); after,
    the per-expert modules are back."""
    swapped = []
    try:
        for block in model.model.layers:
            layout = moe_block(block)
            moe = block.get_submodule(layout.path) if layout else None
            if moe is not None and isinstance(moe.experts, RoutedExperts):
                swapped.append((moe, moe.experts))
                moe.experts = fuse(moe.experts)
        yield
    finally:
        for moe, routed in swapped:
            moe.experts = routed


def expert_count(config) -> int | None:
    """The model's expert count as its config names it, or None for a dense model."""
    for field in EXPERT_COUNT_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
