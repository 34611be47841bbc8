"""Real shrink of the model's depth: dropped blocks leave `model.model.layers` (the modules are kept
aside, so dropping is undone exactly), the kept blocks' attention layer indices are renumbered so the
key/value cache stays consistent, and the config's layer count (and per-layer types) follow."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch

from workbench.model.layout import blocks_of


class Depth:
    """Which blocks of a model run. Block numbers are always the original ones."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.blocks = list(blocks_of(model))
        self.layer_types = getattr(model.config, "layer_types", None)
        self.dropped: tuple[int, ...] = ()

    @property
    def active(self) -> list[int]:
        """The original numbers of the blocks that run, in order."""
        return [i for i in range(len(self.blocks)) if i not in self.dropped]

    def drop(self, dropped: Iterable[int]) -> None:
        """Run every block but `dropped` (an empty list restores the full model)."""
        self.dropped = tuple(sorted(set(dropped)))
        self._install(self.active)

    def _install(self, active: list[int]) -> None:
        kept = [self.blocks[i] for i in active]
        self.model.model.layers = torch.nn.ModuleList(kept)
        for position, block in enumerate(kept):
            block.self_attn.layer_idx = position
        self.model.config.num_hidden_layers = len(kept)
        if self.layer_types is not None:
            self.model.config.layer_types = [self.layer_types[i] for i in active]

    @contextlib.contextmanager
    def full(self) -> Iterator[None]:
        """Temporarily run every block (the dense reference)."""
        self._install(list(range(len(self.blocks))))
        try:
            yield
        finally:
            self._install(self.active)
