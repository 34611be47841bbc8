"""Perplexity on the held-out evaluation part of the data source (consecutive 256-token windows).

Its units are the summed NLL of every run of `CHUNK` (32) predicted tokens within a window, weighted by
the run's token count, with link exp: the perplexity recomputed from them (or from a resample of them)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workbench.model.data import evaluation_windows
from workbench.probes import PROBES, Probe, ProbeContext, ProbeResult, chunk_units

SEQLEN = 256
WINDOWS = {"quick": 2, "full": None}  # None: every window of the evaluation part
BATCH = 4


def held_out_windows(ctx: ProbeContext, size: str) -> torch.Tensor:
    """The token windows (windows x SEQLEN) perplexity and kl read at `size`."""
    return evaluation_windows(ctx.tokenizer, ctx.eval_source, SEQLEN, WINDOWS[size])


def token_nll(model, ids: torch.Tensor, device: torch.device,
              ctx: ProbeContext | None = None) -> tuple[torch.Tensor, float]:
    """Next-token NLL (nats) of every predicted token of `ids` (windows x seqlen): windows x (seqlen - 1),
    float32 on the CPU; and their total as `F.cross_entropy(reduction="sum")` adds them, per batch in
    float32 (the score stays bit-identical to earlier versions and to the sensitivity scan's perplexity)."""
    out, total = [], 0.0
    for start in range(0, len(ids), BATCH):
        if ctx is not None:
            ctx.check_cancel()
        batch = ids[start : start + BATCH].to(device)
        logits = model(batch).logits[:, :-1].float()
        target = batch[:, 1:].reshape(-1)
        logprobs = F.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
        total += F.nll_loss(logprobs, target, reduction="sum").item()
        out.append(F.nll_loss(logprobs, target, reduction="none").view(len(batch), -1).cpu())
    return torch.cat(out), total


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
        ids = held_out_windows(ctx, size)
        nll, total = token_nll(ctx.model, ids, ctx.device, ctx)
        details = {"tokens": nll.numel(), "seqlen": SEQLEN}
        return math.exp(total / nll.numel()), len(ids), details, {"score": chunk_units(nll, "exp")}
