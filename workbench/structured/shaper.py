"""The shaper: applies a plan's structure to the model for real and undoes it from dense. Widths shrink
each block's gate, up and down projections to the kept neurons (through the weight bank, which keeps the
full dense weights); depth drops blocks from the forward pass (`Depth`); expert drops take routed experts
out of their blocks and routers (`ExpertDrops`). Block and expert numbers stay the original ones everywhere."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from workbench.domain.plan import Structure, check_structure, drop_problem
from workbench.engine.weights import WeightBank
from workbench.infra.errors import WorkbenchError
from workbench.model.layout import GLU, LEADER, LinearRef
from workbench.structured.depth import DepthStatistics
from workbench.structured.experts import ExpertDrops
from workbench.structured.shrink import Depth
from workbench.structured.width import NEURON_SCORES, kept_count, kept_neurons, neuron_scores

class Shaper:
    """The current structure of one model (`linears`: its linears block by block)."""

    def __init__(self, model: torch.nn.Module, linears: list[list[LinearRef]], bank: WeightBank):
        self.linears = linears
        self.bank = bank
        self.depth = Depth(model)
        self.experts = ExpertDrops(model)
        self.hidden = int(model.config.hidden_size)
        self.current = Structure()
        self._kept: dict[int, torch.Tensor] = {}  # block -> kept neuron indices, for shrunk blocks
        self.depth_statistics: DepthStatistics | None = None
        self.expert_scores: dict | None = None  # workbench.structured.experts.expert_scores of the dense model

    def _glu(self, block: int) -> dict[str, LinearRef]:
        """The block's dense GLU MLP (empty for a mixture-of-experts block)."""
        return {r.kind: r for r in self.linears[block] if r.kind in GLU and r.group == LEADER[r.kind]}

    def intermediate(self, block: int) -> int:
        """The block's GLU width as loaded (0: a mixture-of-experts block has no dense MLP)."""
        glu = self._glu(block)
        return self.bank.original(glu["gate"].name).shape[0] if glu else 0

    def check(self, structure: Structure, where: str = "structure") -> None:
        """Refuse a structure this model cannot take, naming the key."""
        check_structure(structure, where)
        blocks = len(self.linears)
        bad = [b for b in structure.width_overrides if not 0 <= b < blocks]
        if bad:
            raise WorkbenchError(f"{where}.width_overrides", f"no block {bad[0]} (the model has blocks 0..{blocks - 1})")
        problem = drop_problem(structure.drop_blocks, blocks)
        if problem:
            raise WorkbenchError(f"{where}.drop_blocks", problem)
        NEURON_SCORES.get(structure.width_score, where=f"{where}.width_score")
        self.experts.check(structure.drop_experts, f"{where}.drop_experts")
        moe = [b for b in range(blocks) if not self._glu(b)]
        asked = [b for b in structure.width_overrides if b in moe] or (moe if structure.width_ratio is not None else [])
        if asked:
            key = "width_overrides" if structure.width_overrides and asked[0] in structure.width_overrides else "width_ratio"
            raise WorkbenchError(f"{where}.{key}", f"block {asked[0]} is a mixture-of-experts block: width pruning cuts "
                                                   "dense GLU MLPs (set widths of dense blocks only, or drop experts)")

    def widths(self, structure: Structure) -> dict[int, int]:
        """Kept neurons of every block whose width the structure sets (OptiPFair's count per ratio)."""
        out = {}
        for block in range(len(self.linears)):
            ratio = structure.width_overrides.get(block, structure.width_ratio)
            if ratio is not None and block not in structure.drop_blocks:
                intermediate = self.intermediate(block)
                k = kept_count(intermediate, self.hidden, ratio, structure.width_divisor)
                if k < intermediate:
                    out[block] = k
        return out

    def kept(self, block: int) -> int | None:
        """Neurons the block keeps now (None: full width)."""
        index = self._kept.get(block)
        return None if index is None else index.numel()

    def apply(self, structure: Structure, down_norms: Callable[[int], torch.Tensor | None]) -> list[str]:
        """Make the model have `structure`; returns the linears whose shape changed (they are dense now).
        `down_norms(block)` gives down_proj's dense input channel norms for the data-aware score."""
        if structure == self.current:
            return []
        changed = []
        widths = self.widths(structure)
        for block in range(len(self.linears)):
            index = None
            if block in widths:
                glu = self._glu(block)
                weights = [self.bank.original(glu[k].name) for k in GLU]
                norms = down_norms(block) if structure.width_score == "data" else None
                index = kept_neurons(neuron_scores(structure.width_score, *weights, norms), widths[block])
            old = self._kept.get(block)
            if (old is None and index is None) or (old is not None and index is not None and torch.equal(old, index)):
                continue
            for kind, ref in self._glu(block).items():
                self.bank.select(ref, 1 if kind == "down" else 0, index)
                changed.append(ref.name)
            if index is None:
                self._kept.pop(block)
            else:
                self._kept[block] = index
        self.depth.drop(structure.drop_blocks)
        self.experts.drop(structure.drop_experts)
        self.current = structure
        return changed

    def running(self, ref: LinearRef, structure: Structure | None = None) -> bool:
        """Whether a linear runs under `structure` (default: the current one): its block is not dropped and
        neither is its expert."""
        structure = self.current if structure is None else structure
        return ref.block not in structure.drop_blocks and (
            ref.expert is None or ref.expert not in structure.drop_experts.get(ref.block, ()))

    @contextlib.contextmanager
    def full(self) -> Iterator[None]:
        """Temporarily run every block and every expert (the dense reference)."""
        with self.depth.full(), self.experts.full():
            yield

    @contextlib.contextmanager
    def loadable(self, config) -> Iterator[str | None]:
        """Make the shrunk model saveable as its architecture: `config.intermediate_size` is the kept width
        while every running block has the same one; when widths differ (one intermediate_size cannot say
        it), every MLP is padded with zero neurons to the widest, which gives the same outputs. Yields a
        one-line note in that case. Everything is put back after."""
        widths = {b: self.kept(b) or self.intermediate(b) for b in self.depth.active if self._glu(b)}
        if not widths:  # every running block is a mixture of experts: no MLP width to state
            yield None
            return
        widest = max(widths.values())
        original, stash, note = config.intermediate_size, [], None
        if len(set(widths.values())) > 1:
            note = (f"MLP widths differ between blocks ({min(widths.values())} to {widest} neurons) and "
                    f"{type(config).__name__} has one intermediate_size: exported with every MLP padded with zero "
                    f"neurons to {widest} (same outputs), the nearest layout from_pretrained loads")
            for block, width in widths.items():
                for kind, ref in self._glu(block).items() if width < widest else ():
                    weight = ref.module.weight
                    stash.append((ref.module, weight.data))
                    pad = (0, 0, 0, widest - width) if kind != "down" else (0, widest - width)
                    weight.data = torch.nn.functional.pad(weight.data, pad)
        config.intermediate_size = widest
        try:
            yield note
        finally:
            for module, data in stash:
                module.weight.data = data
            config.intermediate_size = original
