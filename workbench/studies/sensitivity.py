"""Sensitivity scan: for each block, raise only that block's target by a step from the current plan,
re-prune from the cached statistics (milliseconds) and measure one quick probe. It shows where sparsity is
cheap and where it hurts, before hand-tuning. The engine is back in the plan afterwards, also on cancel.

Raising block b changes nothing before it, so perplexity and kl are measured from the hidden states kept
at each block's input under the plan (`workbench.engine.suffix`): only blocks b..L-1 and the head run, on
the quick probes' windows. Other probes run whole.
The default probe is kl (`workbench.domain.signals` says why).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from workbench.domain.plan import MAX_SPARSITY, Plan, check_fraction
from workbench.domain.signals import DEFAULT_SIGNAL, SIGNALS
from workbench.engine.facade import Engine
from workbench.engine.suffix import BlockInputs
from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.model.data import evaluation_windows
from workbench.probes import heldout

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]


@dataclass
class Sensitivity:
    """Per block: how much `probe` moves when only that block's target rises by `step` (None: not
    scanned). `base` is the probe's score under the plan itself."""

    probe: str
    step: float
    base: float
    deltas: list[float | None] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """TOML-ready data (TOML has no null: the scanned blocks are listed with their deltas)."""
        scanned = [i for i, d in enumerate(self.deltas) if d is not None]
        return {"probe": self.probe, "step": self.step, "base": self.base, "seconds": self.seconds,
                "blocks": scanned, "deltas": [self.deltas[i] for i in scanned], "count": len(self.deltas)}

    @classmethod
    def from_dict(cls, data: dict) -> "Sensitivity":
        """The inverse of `to_dict` (checked by the session reader)."""
        deltas: list[float | None] = [None] * int(data["count"])
        for i, d in zip(data["blocks"], data["deltas"]):
            deltas[int(i)] = float(d)
        return cls(str(data["probe"]), float(data["step"]), float(data["base"]), deltas, float(data.get("seconds", 0.0)))


def raised(plan: Plan, block: int, step: float, current: float) -> Plan:
    """`plan` with only `block` raised by `step` above its current target (capped at MAX_SPARSITY)."""
    overrides = dict(plan.block_overrides)
    overrides[block] = min(current + step, MAX_SPARSITY)
    linears = {k: v for k, v in plan.linear_overrides.items() if not k.startswith(f"layers.{block}.")}
    return dataclasses.replace(plan, block_overrides=overrides, linear_overrides=linears)


def suffix_measure(engine: Engine, probe: str) -> Callable[[int], float] | None:
    """Quick `probe` (perplexity or kl; None for others) measured from the inputs of block `position` (a
    running block's index), kept once for the model as it stands; equal to the probe's quick score up to
    float summation."""
    if probe not in SIGNALS:
        return None
    ids = evaluation_windows(engine.loaded.tokenizer, engine.calibration.text, heldout.SEQLEN,
                             heldout.WINDOWS["quick"])
    reference = engine.dense_topk(ids) if probe == "kl" else None
    kept = BlockInputs(engine.loaded.model, ids, engine.loaded.device)

    def measure(position: int) -> float:
        total, count = 0.0, 0
        for n, (logits, batch) in enumerate(kept.logits_from(position)):
            if reference is None:
                target = batch[:, 1:].to(logits.device)
                logits = logits[:, :-1].float()
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum").item()
                count += target.numel()
            else:
                rows = slice(n * heldout.BATCH, (n + 1) * heldout.BATCH)
                token, _ = heldout.token_kl(torch.log_softmax(logits[:, :-1].float(), dim=-1),
                                       *(t[rows].to(logits.device) for t in (reference.logprobs, reference.ids, reference.tail)))
                total += token.sum().item()
                count += token.numel()
        return math.exp(total / count) if reference is None else total / count

    return measure


def scan(engine: Engine, plan: Plan, step: float = 0.1, probe: str = DEFAULT_SIGNAL, blocks: list[int] | None = None,
         progress: Progress | None = None, cancel: Cancel | None = None) -> Sensitivity:
    """Scan `blocks` (default: all) of `plan`; the engine is applied to `plan` first and left in it."""
    check_fraction(step, "--step")
    if step <= 0:
        raise WorkbenchError("--step", f"must be > 0, got {step}")
    if plan.pattern:
        raise WorkbenchError("sensitivity", f"per-block targets do not apply with pattern {plan.pattern}")
    count = len(engine.linears)
    dropped = set(plan.structure.drop_blocks)
    running = [b for b in range(count) if b not in dropped]  # plan block -> position in the running model
    blocks = running if blocks is None else blocks
    for b in blocks:
        if not 0 <= b < count:
            raise WorkbenchError("--blocks", f"no block {b} (the model has blocks 0..{count - 1})")
    if dropped & set(blocks):
        raise WorkbenchError("--blocks", f"block(s) {', '.join(map(str, sorted(dropped & set(blocks))))} are dropped by the plan")
    start = time.perf_counter()
    engine.apply(plan, cancel=cancel)
    targets = engine.block_targets(plan)
    from_block = suffix_measure(engine, probe)

    def measure(b: int) -> float:
        """The probe with the model as it stands; perplexity and kl from block b's kept inputs on."""
        return from_block(running.index(b)) if from_block else engine.probe([probe])[0].score

    base = from_block(len(running)) if from_block else measure(running[0])
    result = Sensitivity(probe, step, base, [None] * count)
    try:
        for n, b in enumerate(blocks):
            if cancel is not None and cancel():
                raise Cancelled()
            if progress:
                progress(f"sensitivity: block {b} +{step:.0%}", n / len(blocks))
            engine.apply(raised(plan, b, step, targets[b]))
            result.deltas[b] = measure(b) - base
    finally:
        engine.apply(plan)
    result.seconds = time.perf_counter() - start
    if progress:
        progress("sensitivity done", 1.0)
    return result
