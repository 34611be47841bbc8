"""The block/linear layout of a Llama-family model: `model.model.layers[i]` with `self_attn.{q,k,v,o}_proj`
and `mlp.{gate,up,down}_proj`; anything else is refused naming what was found."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.infra.errors import WorkbenchError

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


@dataclass(frozen=True)
class LinearRef:
    """One projection of one block: `name` is `layers.{block}.{path}`, `kind` its short name."""

    block: int
    kind: str
    name: str
    module: torch.nn.Linear

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


def find_linears(model: torch.nn.Module) -> list[list[LinearRef]]:
    """Per block, its seven projections in the order q, k, v, o, gate, up, down."""
    out: list[list[LinearRef]] = []
    for i, block in enumerate(blocks_of(model)):
        refs = []
        for kind, path in LINEAR_PATHS.items():
            module = block.get_submodule(path) if _has(block, path) else None
            if not isinstance(module, torch.nn.Linear):
                found = ", ".join(n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear))
                raise WorkbenchError(
                    f"model architecture {type(model).__name__}, block {i}",
                    f"expected Llama-family projection {path}; linears found: {found or 'none'}",
                )
            refs.append(LinearRef(block=i, kind=kind, name=f"layers.{i}.{path}", module=module))
        out.append(refs)
    return out


def _has(module: torch.nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
