"""Agent-guided allocation (arXiv 2601.09694) as an allocator: its params carry the recorded decisions of
an agent run (`workbench.agent`), and `allocate` replays them without any policy, LLM or measurement:

    allocator = "agent"
    [plan.allocator_params]
    policy = "builtin"        # who decided (for the record)
    step = 0.025              # the loop's settings (used when the loop runs again)
    span = 0.1
    max_steps = 40
    rollback = 0.1
    measure = "kl"            # or "perplexity"
    start = 0.5               # every block's target before the first step
    [[plan.allocator_params.steps]]   # the accepted steps, in order
    blocks = [3, 7]
    by = [0.025, 0.025]

Targets: `start` for every block, each accepted step adds `by` to its blocks (capped at MAX_SPARSITY), and
a final rebalance makes the parameter-weighted mean exactly the plan's sparsity (a no-op when the run
reached its target; when it stopped short, the gap is shared by every block).

Without `start` the decisions are missing: `Engine.prepare` (so `prune`, `apply` and `workbench compare`)
runs the loop first with the plan's settings and records them in the plan (see `search`).
"""

from __future__ import annotations

from workbench.agent.record import PARAMS
from workbench.allocators import ALLOCATORS, SEARCH, AllocationContext, Allocator, rebalance
from workbench.domain.plan import MAX_SPARSITY, check_fraction
from workbench.infra.errors import WorkbenchError


def targets_after(start: float, steps, count: int, where: str = "allocator_params.steps") -> list[float]:
    """Per-block targets: `start` everywhere, then each step's raises in order (capped at MAX_SPARSITY)."""
    targets = [start] * count
    for i, step in enumerate(steps):
        for block, by in zip(step["blocks"], step["by"]):
            if not 0 <= block < count:
                raise WorkbenchError(f"{where}[{i}].blocks", f"no block {block} (the model has blocks 0..{count - 1})")
            targets[block] = min(targets[block] + by, MAX_SPARSITY)
    return targets


def check_agent(params: dict, where: str) -> None:
    """A known policy and well-formed recorded decisions (the settings are checked by their declarations)."""
    from workbench.agent.policies import POLICIES

    if params["policy"] not in POLICIES.names():
        raise WorkbenchError(f"{where}.policy", f"unknown policy {params['policy']!r} (known: {', '.join(POLICIES.names())})")
    if params["start"] is not None:
        check_fraction(params["start"], f"{where}.start")
    steps = params["steps"]
    if not isinstance(steps, (list, tuple)):
        raise WorkbenchError(f"{where}.steps", "expected a list of tables with blocks and by")
    for i, step in enumerate(steps):
        at = f"{where}.steps[{i}]"
        if not isinstance(step, dict) or set(step) != {"blocks", "by"}:
            raise WorkbenchError(at, "expected a table with exactly blocks = [...] and by = [...]")
        blocks, by = step["blocks"], step["by"]
        if not isinstance(blocks, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
            raise WorkbenchError(f"{at}.blocks", "expected a list of block indices")
        if not isinstance(by, list) or len(by) != len(blocks) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1 for x in by):
            raise WorkbenchError(f"{at}.by", "expected one raise in (0, 1) per block")
    if steps and params["start"] is None:
        raise WorkbenchError(f"{where}.start", "missing (the recorded steps start from it)")


def allocate_agent(ctx: AllocationContext, sparsity: float, **params) -> list[float]:
    """Replay the recorded decisions (`params` checked by `check_agent`)."""
    if params["start"] is None:
        raise WorkbenchError("allocator_params.start", "no recorded decisions yet: run `workbench agent`, or "
                                                       "prepare the plan on an engine (Engine.prepare runs the loop)")
    targets = targets_after(params["start"], params["steps"], len(ctx.block_numels))
    return rebalance(targets, ctx.block_numels, sparsity)


def search_agent(engine, plan, progress=None, cancel=None) -> None:
    """Run the loop with the plan's settings when its decisions are missing, and record them in
    `plan.allocator_params` (the run itself stays on the engine: its last state is the final allocation)."""
    params = ALLOCATORS.get("agent").params(plan.allocator_params)
    if params["start"] is not None:
        return
    from workbench.agent.loop import AgentRun, AgentSettings
    from workbench.agent.policies import make_policy

    settings = AgentSettings.from_params(params)
    run = AgentRun(engine, plan, make_policy(params["policy"], settings), settings)
    run.run(progress, cancel)
    plan.allocator_params = run.allocator_params()


ALLOCATORS.add(Allocator("agent", allocate_agent, declared=PARAMS, needs=frozenset({SEARCH}),
                         description="agent-guided: a loop raises blocks step by step, rolling back harmful steps",
                         check=check_agent, search=search_agent))
