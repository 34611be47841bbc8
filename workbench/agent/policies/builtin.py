"""The built-in policy: deterministic, offline, greedy on the observation.

Each block's cost is the sum of z-scores across blocks of what says "keep this block": the low quantile
of its Wanda scores, its mean |gradient|, its outlier ratio, its sensitivity (when scanned) and its
current sparsity (so no block runs far ahead). The `BLOCK_SHARE` lowest-cost blocks are raised by the full
step. Self-reflection: every rollback a block took part in adds `ROLLBACK_PENALTY` to its cost for the rest
of the run (so a failed set is not simply tried again after the next accepted step); the blocks of every
step rolled back since the last accepted one are left out, and each rollback in a row halves how many
blocks are raised (at least one). When no block is left, the policy stops.
"""

from __future__ import annotations

import math

from workbench.agent.policies import POLICIES
from workbench.agent.record import ACCEPTED, ROLLED_BACK, Action, Observation, StepRecord, zscores
from workbench.domain.plan import MAX_SPARSITY

BLOCK_SHARE = 0.25  # share of the blocks raised in one step
ROLLBACK_PENALTY = 1.0  # cost added per rollback a block took part in: one standard deviation of a signal


def block_costs(observation: Observation) -> list[float]:
    """Per block: z(Wanda 10th percentile) + z(|gradient|) + z(outlier ratio) + z(sensitivity) + z(sparsity)."""
    blocks = observation.blocks
    terms = [[b.wanda_z for b in blocks], [b.gradient_z for b in blocks],
             zscores([b.outlier_ratio for b in blocks]), zscores([b.sparsity for b in blocks])]
    if all(b.sensitivity is not None for b in blocks):
        terms.append(zscores([b.sensitivity for b in blocks]))
    return [sum(column) for column in zip(*terms)]


@POLICIES.register("builtin")
class BuiltinPolicy:
    """Greedy: raise the lowest-cost blocks, fewer after rollbacks (see the module docstring)."""

    name = "builtin"

    def __init__(self, settings=None):
        """Nothing to set up: the policy reads only the observation and the history."""

    def propose(self, observation: Observation, history: list[StepRecord]) -> Action:
        failed: list[StepRecord] = []
        for record in reversed(history):
            if record.outcome == ACCEPTED:
                break
            if record.outcome == ROLLED_BACK:
                failed.append(record)
        avoid = {b for record in failed for b in record.blocks}
        count = max(1, math.ceil(BLOCK_SHARE * len(observation.blocks)) >> len(failed))
        costs = block_costs(observation)
        for record in history:
            if record.outcome == ROLLED_BACK:
                for b in record.blocks:
                    costs[b] += ROLLBACK_PENALTY
        open_blocks = [b.index for b in observation.blocks if b.index not in avoid and b.sparsity < MAX_SPARSITY]
        chosen = sorted(sorted(open_blocks, key=lambda i: (costs[i], i))[:count])
        if not chosen:
            return Action({}, reason="every block is at the cap or in a step just rolled back", stop=True)
        why = f"lowest cost {', '.join(f'{i}: {costs[i]:+.2f}' for i in chosen)}"
        if failed:
            why += f"; avoiding {','.join(map(str, sorted(avoid)))} after {len(failed)} rollback(s)"
        return Action({i: observation.step for i in chosen}, reason=why)
