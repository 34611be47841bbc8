"""Perplexity on the held-out evaluation part of the data source (consecutive 256-token windows).

Its units are the summed NLL of every run of `CHUNK` (32) predicted tokens within a window, weighted by
the run's token count, with link exp: the perplexity recomputed from them (or from a resample of them)."""

from __future__ import annotations

import math

from workbench.probes import PROBES, Probe, ProbeContext, ProbeResult, chunk_units
from workbench.probes.heldout import SEQLEN, held_out_pass


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
        nll = held_out_pass(ctx, size, with_kl=False)
        details = {"tokens": nll.nll.numel(), "seqlen": SEQLEN}
        return math.exp(nll.total / nll.nll.numel()), len(nll.nll), details, {"score": chunk_units(nll.nll, "exp")}
