"""Calibration capture, block by block.

1. Run the calibration windows through the embeddings and stop at block 0 (a forward pre-hook raises),
   keeping block 0's input hidden states and the keyword arguments every block receives (rotary
   position embeddings, attention mask).
2. For each block in turn: run it once with hooks on the first linear of each input group to gather
   statistics (squared L2 norm per input channel, and the Hessian X X^T when asked), hand the statistics
   to `on_block` (which prunes the block), then, in sequential mode, run the block again so the next
   block sees the outputs of the pruned one. In one-pass mode the statistics come from the dense model
   and a single pass per block suffices.

Only one block's activations are alive at a time. With an offloaded model the block visits the device
only while it runs (see `workbench.model.loader.attach_offload`).
"""

from __future__ import annotations

from typing import Callable

import torch

from workbench.domain.plan import EXPERT_FALLBACKS, ONE_PASS, CalibrationSpec
from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.infra.memory import release_freed_memory
from workbench.methods import LinearStats
from workbench.model.experts import moe_block
from workbench.model.layout import blocks_of, stat_groups

MICRO_BATCH = 8

BlockStats = dict[str, LinearStats]  # statistics group ("q", "o", "gate", "down", "experts.3.gate"...) -> statistics


class _Caught(Exception):
    def __init__(self, args: tuple, kwargs: dict):
        super().__init__("block 0 reached")
        self.block_args = args
        self.block_kwargs = kwargs


def block0_inputs(model: torch.nn.Module, ids: torch.Tensor, device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    """Hidden states entering block 0 and the keyword arguments of the block call, per micro-batch."""

    def stop(module, args, kwargs):
        raise _Caught(args, kwargs)

    handle = blocks_of(model)[0].register_forward_pre_hook(stop, with_kwargs=True, prepend=True)
    hidden, kwargs = [], []
    try:
        for start in range(0, len(ids), MICRO_BATCH):
            try:
                model(ids[start : start + MICRO_BATCH].to(device), use_cache=False)
            except _Caught as caught:
                args, kw = caught.block_args, dict(caught.block_kwargs)
                hidden.append(args[0] if args else kw.pop("hidden_states"))
                kwargs.append(kw)
    finally:
        handle.remove()
    return hidden, kwargs


class _StatsDone(Exception):
    """Raised once the last linear's input is seen: a statistics-only pass needs nothing after it."""


def _run_block(block: torch.nn.Module, hidden: list[torch.Tensor], kwargs: list[dict], keep_outputs: bool) -> list[torch.Tensor]:
    outputs = []
    for h, kw in zip(hidden, kwargs):
        try:
            out = block(h, **kw)
        except _StatsDone:
            continue
        if keep_outputs:
            outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


def add_upper_gram(hessian: torch.Tensor, x: torch.Tensor) -> None:
    """Add the upper triangle of `x^T x` to `hessian` (lower entries below the diagonal blocks are left
    alone), in row blocks of at least 128 rows (about 60% of the full product's work, which dominates
    calibration with Hessians; smaller blocks cost more per flop). `symmetric_from_upper` completes it."""
    d = x.shape[1]
    step = max(128, d // 8)
    for a in range(0, d, step):
        b = min(a + step, d)
        hessian[a:b, a:].addmm_(x[:, a:b].T, x[:, a:])


def symmetric_from_upper(hessian: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle is that of `hessian`."""
    return hessian.triu() + hessian.triu(1).T


def _stats_hooks(block: torch.nn.Module, hessian: bool, stop_at_last: bool) -> tuple[dict, list]:
    """Forward pre-hooks that accumulate per-group input statistics on the block's group leaders
    (`stat_groups`; an expert's hooks see only the tokens routed to it). With `stop_at_last` the last
    leader's hook of a dense block ends the block's forward (raises `_StatsDone`) once it has its input,
    which saves down_proj's product and everything after it."""
    acc: dict[str, dict] = {}
    handles = []
    groups = stat_groups(block)
    stop_group = groups[-1][0] if stop_at_last and moe_block(block) is None else None
    for group, path in groups:
        module = block.get_submodule(path)
        acc[group] = {"sq_norm": None, "hessian": None, "tokens": 0, "width": module.in_features}

        def hook(mod, args, slot=acc[group], stop=group == stop_group):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
            if hessian:  # the squared norms are its diagonal
                if slot["hessian"] is None:
                    slot["hessian"] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
                add_upper_gram(slot["hessian"], x)
            else:
                sq = x.pow(2).sum(0)
                slot["sq_norm"] = sq if slot["sq_norm"] is None else slot["sq_norm"].add_(sq)
            slot["tokens"] += x.shape[0]
            if stop:
                raise _StatsDone()

        handles.append(module.register_forward_pre_hook(hook))
    return acc, handles


def block_statistics(acc: dict, hessian: bool, fallback: str = CalibrationSpec.expert_fallback,
                     min_tokens: int = CalibrationSpec.expert_min_tokens) -> BlockStats:
    """One block's statistics on the CPU. A routed expert that saw fewer than `min_tokens` calibration tokens
    takes its fallback: "pooled", the sums over the block's experts of the same input (gate's or down's),
    or "magnitude", unit norms and an identity Hessian (Wanda and SparseGPT then rank by |W|); its own
    token count is kept (the engine state's `expert_tokens`)."""
    if fallback not in EXPERT_FALLBACKS:
        raise WorkbenchError("--expert-fallback", f"unknown fallback {fallback!r} (use {', '.join(EXPERT_FALLBACKS)})")
    stats = {group: _linear_stats(slot) for group, slot in acc.items() if slot["tokens"]}
    for group, slot in acc.items():
        if not group.startswith("experts.") or slot["tokens"] >= min_tokens:
            continue
        kind = group.rsplit(".", 1)[1]
        donors = [s for g, s in stats.items() if g.startswith("experts.") and g.endswith(f".{kind}")
                  and acc[g]["tokens"] >= min_tokens]
        if fallback == "pooled" and donors:
            sq = torch.stack([d.sq_norm for d in donors]).sum(0)
            h = torch.stack([d.hessian for d in donors]).sum(0) if hessian else None
            stats[group] = LinearStats(sq, slot["tokens"], h)
        else:  # magnitude, or no expert of the block saw enough tokens to pool
            width = slot["width"]
            stats[group] = LinearStats(torch.ones(width), slot["tokens"], torch.eye(width) if hessian else None)
    return stats


def _linear_stats(slot: dict) -> LinearStats:
    """One group's accumulated statistics, on the CPU."""
    if slot["hessian"] is None:
        return LinearStats(sq_norm=slot["sq_norm"].cpu(), tokens=slot["tokens"])
    hessian = symmetric_from_upper(slot["hessian"]).cpu()
    return LinearStats(sq_norm=hessian.diagonal().clone(), tokens=slot["tokens"], hessian=hessian)


def capture(
    model: torch.nn.Module,
    ids: torch.Tensor,
    device: torch.device,
    mode: str,
    hessian: bool,
    before_block: Callable[[int], None] | None = None,
    on_block: Callable[[int, BlockStats], None] | None = None,
    progress: Callable[[str, float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    fallback: str = CalibrationSpec.expert_fallback,
    min_tokens: int = CalibrationSpec.expert_min_tokens,
) -> list[BlockStats]:
    """Gather statistics for every block. `before_block(i)` runs before block i's statistics pass (the
    engine puts the block back to dense there); `on_block(i, stats)` runs once block i's statistics are
    complete. In sequential mode block i's outputs are computed after `on_block`, so block i+1 sees
    block i as pruned; in one-pass mode they come from the same (dense) pass as the statistics.
    Statistics are returned on the CPU; routed experts that saw fewer than `min_tokens` tokens take
    `fallback` (`block_statistics`)."""
    layers = blocks_of(model)
    with torch.no_grad():
        hidden, kwargs = block0_inputs(model, ids, device)
        all_stats: list[BlockStats] = []
        for i, block in enumerate(layers):
            if cancel is not None and cancel():
                raise Cancelled()
            if progress:
                progress(f"calibrating block {i}/{len(layers)}", i / len(layers))
            if before_block is not None:
                before_block(i)
            acc, handles = _stats_hooks(block, hessian, stop_at_last=(mode != ONE_PASS))
            try:
                outputs = _run_block(block, hidden, kwargs, keep_outputs=(mode == ONE_PASS))
            finally:
                for h in handles:
                    h.remove()
            stats = block_statistics(acc, hessian, fallback, min_tokens)
            all_stats.append(stats)
            if on_block is not None:
                on_block(i, stats)
            if mode == ONE_PASS:
                hidden = outputs
            elif i + 1 < len(layers):  # the last block's pruned outputs feed nothing
                hidden = _run_block(block, hidden, kwargs, keep_outputs=True)
            # Once the dynamic mmap threshold has risen, a block's temporaries come from the heap and
            # leave it fragmented; freed, they stay resident until trimmed, and without a trim per block
            # the garbage grows from block to block (the peak of one prune varied by 400 MiB between
            # machines and stage orders). A trim per block costs a few page faults per reused page.
            release_freed_memory()
    if progress:
        progress("calibration done", 1.0)
    return all_stats


def dense_forward(model: torch.nn.Module, ids: torch.Tensor, device: torch.device) -> None:
    """One forward pass of the whole model over `ids` in micro-batches (the benchmark's unit)."""
    with torch.no_grad():
        for start in range(0, len(ids), MICRO_BATCH):
            model(ids[start : start + MICRO_BATCH].to(device), use_cache=False)
