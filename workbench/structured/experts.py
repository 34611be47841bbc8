"""Expert pruning: routed experts leave their block, by router frequency, by REAP saliency or by hand.

A dropped expert leaves its block's `RoutedExperts` and its row leaves the router (every router tensor
whose first dimension is the expert count: the weight, a score-correction bias), so the softmax and the
top-k run over the kept experts only; the modules and rows are kept aside, so dropping is undone
exactly. A block keeps at least top-k experts. Expert numbers are always the original ones.

Scores, over the calibration tokens on the dense model:
- `frequency`: the tokens the router sends to the expert.
- `reap`: REAP's saliency (Lasby et al., "REAP the experts", arXiv 2510.13999): the mean over the tokens
  routed to the expert of its router weight times the L2 norm of its output, 0 for an expert that gets
  no token.
A config holds one expert count, so an export needs the same number of experts kept in every MoE block
(`export_problem`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from workbench.domain.plan import EXPERT_SCORES
from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.model.experts import EXPERT_COUNT_FIELDS, Expert, RoutedExperts, moe_block

@dataclass
class _Block:
    """One MoE block as loaded: its experts module, router, experts and router rows, top-k."""

    routed: RoutedExperts
    router: torch.nn.Module
    experts: list[Expert]
    rows: dict[str, torch.Tensor]  # router tensors with one row per expert, by attribute name
    top_k: int


class ExpertDrops:
    """Which experts of a model run. Keyed by original block number."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.blocks: dict[int, _Block] = {}
        self.refused: dict[int, str] = {}  # MoE blocks whose experts cannot be dropped: block -> experts class
        for i, block in enumerate(model.model.layers):
            layout = moe_block(block)
            if layout is None:
                continue
            routed, router = block.get_submodule(f"{layout.path}.experts"), block.get_submodule(layout.router)
            if not isinstance(routed, RoutedExperts):  # a checkpoint's own expert list: its forward is not ours to shrink
                self.refused[i] = type(routed).__name__
                continue
            count = len(routed)
            rows = {name: t for name, t in [*router.named_parameters(recurse=False), *router.named_buffers(recurse=False)]
                    if t.dim() >= 1 and t.shape[0] == count}
            self.blocks[i] = _Block(routed, router, list(routed), rows, layout.top_k)
        self.dropped: dict[int, tuple[int, ...]] = {}

    def count(self, block: int) -> int:
        """Experts of `block` as loaded."""
        return len(self.blocks[block].experts)

    def check(self, drops: dict, where: str = "structure.drop_experts") -> None:
        """Refuse drops this model cannot take: a dense or unknown block, an unknown expert, one named twice,
        fewer than top-k kept."""
        for block, experts in drops.items():
            key = f"{where}.{block}"
            if block in self.refused:
                raise WorkbenchError(key, f"block {block} keeps its experts as {self.refused[block]}: dropping experts "
                                          "needs transformers' fused experts")
            if block not in self.blocks:
                moe = ", ".join(map(str, self.blocks)) or "none"
                raise WorkbenchError(key, f"block {block} has no routed experts (mixture-of-experts blocks: {moe})")
            count, top_k = self.count(block), self.blocks[block].top_k
            bad = [e for e in experts if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < count]
            if bad:
                raise WorkbenchError(key, f"no expert {bad[0]!r} (block {block} has experts 0..{count - 1})")
            if len(set(experts)) != len(experts):
                raise WorkbenchError(key, f"an expert is named twice in {list(experts)}")
            if count - len(experts) < top_k:
                raise WorkbenchError(key, f"dropping {len(experts)} of {count} experts leaves {count - len(experts)}, "
                                          f"fewer than the {top_k} each token is routed to")

    def running(self, block: int, expert: int | None) -> bool:
        """Whether an expert runs (anything outside the routed experts does)."""
        return expert is None or expert not in self.dropped.get(block, ())

    def drop(self, drops: dict[int, list[int]]) -> None:
        """Run every expert but `drops` (block -> original expert numbers); {} restores them all."""
        self.dropped = {b: tuple(sorted(e)) for b, e in drops.items() if e}
        self._install(self.dropped)

    def _install(self, dropped: dict[int, tuple[int, ...]]) -> None:
        for i, entry in self.blocks.items():
            keep = [e for e in range(len(entry.experts)) if e not in dropped.get(i, ())]
            entry.routed.set_experts([entry.experts[e] for e in keep], keep)
            index = torch.tensor(keep)
            for name, rows in entry.rows.items():
                kept = rows.index_select(0, index.to(rows.device))
                if isinstance(rows, torch.nn.Parameter):
                    kept = torch.nn.Parameter(kept, requires_grad=False)
                setattr(entry.router, name, kept)
            if isinstance(getattr(entry.router, "num_experts", None), int):
                entry.router.num_experts = len(keep)

    @contextlib.contextmanager
    def full(self) -> Iterator[None]:
        """Temporarily run every expert (the dense reference)."""
        self._install({})
        try:
            yield
        finally:
            self._install(self.dropped)

    def export_problem(self, drops: dict[int, list[int]] | None = None) -> str | None:
        """Why the model cannot be exported as its architecture with `drops` (default: as it runs now): its MoE
        blocks keep different expert counts. None when it can."""
        drops = self.dropped if drops is None else drops
        kept = {i: len(entry.experts) - len(drops.get(i, ())) for i, entry in self.blocks.items()}
        if len(set(kept.values())) > 1:
            return (f"blocks keep different numbers of experts ({min(kept.values())} to {max(kept.values())}) and the "
                    "config holds one expert count: drop the same number of experts in every block to export")
        return None

    @contextlib.contextmanager
    def exported(self, config) -> Iterator[None]:
        """The config's expert count set to what every block keeps, while inside (see `export_problem`)."""
        problem = self.export_problem()
        if problem:
            raise WorkbenchError("--export", problem)
        field = next((f for f in EXPERT_COUNT_FIELDS if isinstance(getattr(config, f, None), int)), None)
        kept = {len(entry.routed) for entry in self.blocks.values()}
        if field is None or not kept:
            yield
            return
        original = getattr(config, field)
        setattr(config, field, kept.pop())
        try:
            yield
        finally:
            setattr(config, field, original)


def expert_scores(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device,
                  cancel: Callable[[], bool] | None = None) -> dict[str, dict[int, list[float]]]:
    """Per score (`frequency`, `reap`), per MoE block (original number), one value per expert, from one
    forward pass of `batches` (token ids) through `model` as it runs (call it inside `ExpertDrops.full` on
    the dense weights)."""
    routed = {i: block.get_submodule(f"{moe_block(block).path}.experts") for i, block in enumerate(model.model.layers)
              if moe_block(block) is not None}
    routed = {i: r for i, r in routed.items() if isinstance(r, RoutedExperts)}  # the experts this module runs
    tokens = {i: torch.zeros(len(r), dtype=torch.float64) for i, r in routed.items()}
    saliency = {i: torch.zeros(len(r), dtype=torch.float64) for i, r in routed.items()}

    def observer(i: int):
        def observe(position: int, weights: torch.Tensor, outputs: torch.Tensor) -> None:
            tokens[i][position] += len(weights)
            saliency[i][position] += float((weights.double() * outputs.double().norm(dim=-1)).sum())
        return observe

    try:
        for i, r in routed.items():
            object.__setattr__(r, "observer", observer(i))
        with torch.no_grad():
            for ids in batches:
                if cancel is not None and cancel():
                    raise Cancelled()
                model(ids.to(device), use_cache=False)
    finally:
        for r in routed.values():
            object.__setattr__(r, "observer", None)
    return {"frequency": {i: t.tolist() for i, t in tokens.items()},
            "reap": {i: (saliency[i] / tokens[i].clamp(min=1)).tolist() for i in routed}}


def choose_expert_drops(scores: dict[str, dict[int, list[float]]], by: str, keep: int) -> dict[int, list[int]]:
    """Per block, the experts outside the `keep` highest scores `by` (ties: the lower number is kept)."""
    if by not in EXPERT_SCORES:
        raise WorkbenchError("--drop-experts-by", f"unknown expert score {by!r} (use {', '.join(EXPERT_SCORES)})")
    scores, drops = scores[by], {}
    for block, values in scores.items():
        if not 0 < keep <= len(values):
            raise WorkbenchError("--experts-keep", f"keep {keep} of {len(values)} experts: expected 1..{len(values)}")
        ranked = sorted(range(len(values)), key=lambda e: (-values[e], e))
        drops[block] = sorted(ranked[keep:])
    return drops
