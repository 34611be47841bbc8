"""Pruning the linears to their assignments: a full calibration-aware prune, each block pruned as its
statistics are captured, and an incremental prune from cached statistics. Both are cancellable between
pruning units (`prune_units`), and a failed or cancelled full prune puts back what it touched."""

from __future__ import annotations

import itertools
from typing import Callable

import torch

from workbench.domain.plan import Structure
from workbench.engine.calibration import CalibrationCache
from workbench.engine.capture import BlockStats, release_freed_memory
from workbench.engine.planner import CheckedPlan, Planner
from workbench.engine.weights import Assignment, WeightBank
from workbench.infra.errors import Cancelled
from workbench.methods import METHODS
from workbench.model.layout import LinearRef
from workbench.structured.shaper import Shaper

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]


def prune_units(refs: list[LinearRef], assigned: dict[str, Assignment]) -> list[list[LinearRef]]:
    """What is pruned (and cancellable) as one: for a method with `prune_group`, the consecutive linears
    of `refs` that read the same input (same block, same group leader); otherwise one linear each."""
    groups = []
    for _, group in itertools.groupby(refs, key=lambda r: (r.block, r.group, assigned[r.name].method)):
        group = list(group)
        if METHODS.get(assigned[group[0].name].method).prune_group is None:
            groups.extend([r] for r in group)
        else:
            groups.append(group)
    return groups


class Pruner:
    """Prunes one model's linears (`linears`, block by block) in its weight bank, from its calibration
    cache, in the structure its shaper applies, to the assignments its planner makes."""

    def __init__(self, linears: list[list[LinearRef]], bank: WeightBank, statistics: CalibrationCache,
                 shaper: Shaper, planner: Planner):
        self.linears = linears
        self.bank = bank
        self.statistics = statistics
        self.shaper = shaper
        self.planner = planner

    def down_norms(self, block: int) -> torch.Tensor | None:
        """down_proj's input channel norms in the dense model (for the data-aware width score)."""
        dense = self.statistics.dense
        return None if dense is None else dense[block]["down"].sq_norm

    def full(self, checked: CheckedPlan, hessian: bool, progress: Progress | None, cancel: Cancel | None) -> None:
        """Apply the plan's structure, capture statistics block by block (with Hessians when `hessian`) and
        prune each block as its statistics land; commit them. On any failure, a cancel included, the
        structure, every touched linear and the committed statistics are as they were before."""
        old_stats, old_assigned, old_structure = self.statistics.committed, self.bank.assignments(), self.shaper.current
        touched: list[str] = []
        try:
            touched += self.shaper.apply(checked.plan.structure, self.down_norms)
            dropped = [r.name for block in self.linears for r in block if not self.shaper.running(r)]
            self.bank.restore(dropped, {}, None)  # a dropped block or expert is dense, so bringing it back is exact
            touched += dropped
            assigned = self.planner.assignments(checked)
            active = self.shaper.depth.active  # capture numbers the blocks that run; these are their numbers

            def to_dense(position: int) -> None:
                touched.extend(ref.name for ref in self.linears[active[position]] if self.bank.to_dense(ref))

            def prune_block(position: int, block_stats: BlockStats) -> None:
                for group in prune_units([r for r in self.linears[active[position]] if self.shaper.running(r)], assigned):
                    if cancel is not None and cancel():
                        raise Cancelled()
                    touched.extend(r.name for r in group)
                    self.bank.prune_group(group, self.statistics.hessians.linear(group[0].group, block_stats), assigned)

            captured = self.statistics.capture(hessian, to_dense, prune_block, progress, cancel)
        except BaseException:
            touched += self.shaper.apply(old_structure, self.down_norms)
            self.bank.restore(dict.fromkeys(touched), old_assigned,
                              (lambda ref: self.statistics.linear(ref, old_stats)) if old_stats else None)
            raise
        stats: list[BlockStats | None] = [None] * len(self.linears)
        for position, block_stats in zip(active, captured):
            stats[position] = block_stats
        self.statistics.commit(stats)

    def incremental(self, checked: CheckedPlan, progress: Progress | None, cancel: Cancel | None) -> int:
        """Re-prune from the cached statistics only the linears whose assignment changed, one unit at a
        time (each linear is replaced in one step); how many were re-pruned."""
        assigned = self.planner.assignments(checked)
        todo = [ref for block in self.linears for ref in block
                if self.shaper.running(ref) and self.bank.assignment(ref.name) != assigned[ref.name]]
        done = 0
        for group in prune_units(todo, assigned):
            if cancel is not None and cancel():
                raise Cancelled()
            if progress:
                progress(f"pruning {', '.join(r.name for r in group)}", done / len(todo))
            self.bank.prune_group(group, self.statistics.linear(group[0]), assigned)
            done += len(group)
        if todo:
            release_freed_memory()
        if progress:
            progress("pruned", 1.0)
        return len(todo)

    def restore_dense(self) -> None:
        """Every linear back to its dense weight, every block at full width and in the forward pass."""
        self.shaper.apply(Structure(), self.down_norms)
        self.bank.restore(list(self.bank.assignments()), {}, None)
