"""Perplexity on the held-out evaluation part of the data source (consecutive 256-token windows)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workbench.model.data import evaluation_windows
from workbench.probes import PROBES, Probe, ProbeContext, ProbeResult

SEQLEN = 256
WINDOWS = {"quick": 2, "full": None}  # None: every window of the evaluation part
BATCH = 4


def negative_log_likelihood(model, ids: torch.Tensor, device: torch.device, ctx: ProbeContext | None = None) -> tuple[float, int]:
    """Summed next-token NLL (nats) over `ids` (windows x seqlen) and the number of predicted tokens."""
    total, count = 0.0, 0
    for start in range(0, len(ids), BATCH):
        if ctx is not None:
            ctx.check_cancel()
        batch = ids[start : start + BATCH].to(device)
        logits = model(batch).logits[:, :-1].float()
        target = batch[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum").item()
        count += target.numel()
    return total, count


@PROBES.register("perplexity")
class Perplexity(Probe):
    """exp(mean NLL) of the held-out text: lower is better; the dense embedded model is about 10-20."""

    name = "perplexity"
    metric = "ppl"
    higher_is_better = False
    relative = True
    # Replay tolerance, relative: 0.1% for float noise (an unchanged model moves by 1e-5 between
    # machines) plus DAMAGE times ln(ppl / dense ppl), since recomputed masks diverge more the more a
    # model is pruned. Measured (README, Reliability): 14.7% spread at Wanda 70% (ln ratio 3.4), 0.4% at
    # Wanda 50% (ln ratio 0.72); DAMAGE is the 70% ratio, 0.043, with half again for margin.
    tolerance = 0.001
    DAMAGE = 0.065
    floor = 0.0

    def replay_tolerance(self, score: float, items: int, dense: ProbeResult | None) -> float:
        """Relative: float noise plus a share of the damage against the dense model."""
        if dense is None or dense.score <= 0 or score <= 0:
            return self.tolerance
        return self.tolerance + self.DAMAGE * abs(math.log(score / dense.score))

    def measure(self, ctx: ProbeContext, size: str):
        ids = evaluation_windows(ctx.tokenizer, ctx.eval_source, SEQLEN, WINDOWS[size])
        total, count = negative_log_likelihood(ctx.model, ids, ctx.device, ctx)
        return math.exp(total / count), len(ids), {"tokens": count, "seqlen": SEQLEN}
