"""Per-expert targets that follow router usage (`plan.expert_span`): inside a mixture-of-experts block whose
target is S, expert e gets S + span * z_e, where z_e = (mean u - u_e) / max |mean u - u_e| is its usage
below the block's mean, scaled to [-1, 1] (u: calibration tokens the router sends it on the dense model).
The least used expert is pruned up to `span` more, the most used up to `span` less; the experts' mean stays
S (they are the same size), and a target clipped to [0, 0.99] is rebalanced over the others."""

from __future__ import annotations

from workbench.allocators import rebalance


def usage_targets(target: float, usage: list[float], span: float) -> list[float]:
    """The targets of one block's experts (same order as `usage`)."""
    mean = sum(usage) / len(usage)
    spread = max(abs(mean - u) for u in usage)
    if spread == 0 or span == 0:
        return [target] * len(usage)
    return rebalance([target + span * (mean - u) / spread for u in usage], [1] * len(usage), target)
