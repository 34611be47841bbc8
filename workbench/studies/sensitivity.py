"""Sensitivity scan: for each block, raise only that block's target by a step from the current plan,
re-prune from the cached statistics (milliseconds) and measure one quick probe. It shows where sparsity is
cheap and where it hurts, before hand-tuning. The engine is back in the plan afterwards, also on cancel.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

from workbench.domain.plan import MAX_SPARSITY, Plan, check_fraction
from workbench.engine.facade import Engine
from workbench.infra.errors import Cancelled, WorkbenchError

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


def scan(engine: Engine, plan: Plan, step: float = 0.1, probe: str = "perplexity", blocks: list[int] | None = None,
         progress: Progress | None = None, cancel: Cancel | None = None) -> Sensitivity:
    """Scan `blocks` (default: all) of `plan`; the engine is applied to `plan` first and left in it."""
    check_fraction(step, "--step")
    if step <= 0:
        raise WorkbenchError("--step", f"must be > 0, got {step}")
    if plan.pattern:
        raise WorkbenchError("sensitivity", f"per-block targets do not apply with pattern {plan.pattern}")
    count = len(engine.linears)
    blocks = list(range(count)) if blocks is None else blocks
    for b in blocks:
        if not 0 <= b < count:
            raise WorkbenchError("--blocks", f"no block {b} (the model has blocks 0..{count - 1})")
    start = time.perf_counter()
    engine.apply(plan, cancel=cancel)
    targets = engine.block_targets(plan)
    base = engine.probe([probe])[0].score
    result = Sensitivity(probe, step, base, [None] * count)
    try:
        for n, b in enumerate(blocks):
            if cancel is not None and cancel():
                raise Cancelled()
            if progress:
                progress(f"sensitivity: block {b} +{step:.0%}", n / len(blocks))
            engine.apply(raised(plan, b, step, targets[b]))
            result.deltas[b] = engine.probe([probe])[0].score - base
    finally:
        engine.apply(plan)
    result.seconds = time.perf_counter() - start
    if progress:
        progress("sensitivity done", 1.0)
    return result
