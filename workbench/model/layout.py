"""The block/linear layout of a Llama-family model: `model.model.layers[i]` with `self_attn.{q,k,v,o}_proj`
and either `mlp.{gate,up,down}_proj` or, in a mixture-of-experts block, each expert's gate, up and down
(`workbench.model.experts`: `{moe}.experts.{e}.{gate,up,down}_proj`, plus Qwen2-MoE's shared expert);
routers and the shared expert's gate are not linears here, so they are never pruned. Anything else is
refused naming what was found."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.infra.errors import WorkbenchError
from workbench.model.experts import is_per_expert, moe_block

# Short name of each linear -> its path inside a Llama-family decoder layer.
LINEAR_PATHS: dict[str, str] = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
# Linears that read the same input tensor share one set of calibration statistics.
INPUT_GROUPS: tuple[tuple[str, ...], ...] = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))
LEADER = {kind: group[0] for group in INPUT_GROUPS for kind in group}  # linear kind -> kind whose input it reads
ATTENTION = ("q", "k", "v", "o")
GLU = ("gate", "up", "down")


@dataclass(frozen=True)
class LinearRef:
    """One projection of one block: `name` is `layers.{block}.{path}`, `kind` its short name, `group` the key
of the calibration statistics it reads (its input group's leader: "q", "o", "gate", "down"; in an MoE
block "experts.{e}.gate", "experts.{e}.down", "shared.gate", "shared.down"), `expert` its expert's index
(None outside the routed experts)."""

    block: int
    kind: str
    name: str
    module: torch.nn.Linear
    group: str = ""
    expert: int | None = None

    def __post_init__(self):
        if not self.group:
            object.__setattr__(self, "group", LEADER[self.kind])

    @property
    def numel(self) -> int:
        return self.module.weight.numel()


def blocks_of(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers (`model.model.layers`), or a clear error naming what was found instead."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        found = ", ".join(n for n, _ in model.named_children()) or "nothing"
        arch = type(model).__name__
        raise WorkbenchError(
            f"model architecture {arch}",
            f"unsupported layout: expected model.model.layers[i] (Llama family), found children: {found}",
        )
    return layers


def block_paths(block: torch.nn.Module) -> list[tuple[str, str, str, int | None]]:
    """(kind, path, statistics group, expert) of every prunable linear of a decoder block, in the order
    its forward pass reaches them (attention, then a shared expert, then the routed experts)."""
    paths = [(kind, LINEAR_PATHS[kind], LEADER[kind], None) for kind in ATTENTION]
    moe = moe_block(block)
    if moe is None:
        return paths + [(kind, LINEAR_PATHS[kind], LEADER[kind], None) for kind in GLU]
    experts = block.get_submodule(f"{moe.path}.experts")
    if not is_per_expert(experts):
        raise WorkbenchError(f"{moe.path}.experts", "fused experts: call workbench.model.experts.unfuse after loading")
    if moe.shared:
        paths += [(kind, f"{moe.shared}.{kind}_proj", f"shared.{LEADER[kind]}", None) for kind in GLU]
    for position, e in enumerate(getattr(experts, "ids", range(len(experts)))):  # path by position, name by original index
        paths += [(kind, f"{moe.path}.experts.{position}.{kind}_proj", f"experts.{e}.{LEADER[kind]}", e) for kind in GLU]
    return paths


def find_linears(model: torch.nn.Module) -> list[list[LinearRef]]:
    """Per block, its prunable projections (`block_paths`): q, k, v, o, then gate, up, down of the MLP or of
    each expert."""
    out: list[list[LinearRef]] = []
    for i, block in enumerate(blocks_of(model)):
        refs = []
        for kind, path, group, expert in block_paths(block):
            module = block.get_submodule(path) if _has(block, path) else None
            if not isinstance(module, torch.nn.Linear):
                found = ", ".join(n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear))
                raise WorkbenchError(
                    f"model architecture {type(model).__name__}, block {i}",
                    f"expected Llama-family projection {path}; linears found: {found or 'none'}",
                )
            refs.append(LinearRef(block=i, kind=kind, name=f"layers.{i}.{path}", module=module, group=group, expert=expert))
        out.append(refs)
    return out


def stat_groups(block: torch.nn.Module) -> list[tuple[str, str]]:
    """(statistics group, path of the linear whose input it records) of a decoder block, in forward order."""
    seen: dict[str, str] = {}
    for kind, path, group, _ in block_paths(block):
        seen.setdefault(group, path)
    return list(seen.items())


def _has(module: torch.nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
