"""What each user edit does to a plan. UI-free: every function takes a plan and returns a new plan and
a short label for the history; the old plan is never modified. A slider says what it controls with a
`SliderKey`: the global target, one block, or one linear."""

from __future__ import annotations

import dataclasses
import math

from workbench.agent.record import DEFAULTS as AGENT_DEFAULTS
from workbench.agent.record import PARAMS as AGENT_PARAMS
from workbench.allocators import ALLOCATORS, SEARCH
from workbench.app.format import params_text, parse_percent
from workbench.domain.plan import WIDTH_DIVISORS, Plan, drop_problem
from workbench.infra.errors import WorkbenchError
from workbench.infra.params import parse_typed

PARAMS_WHERE = "allocator_params"


@dataclasses.dataclass(frozen=True)
class GlobalKey:
    """The slider of the global target."""


@dataclasses.dataclass(frozen=True)
class BlockKey:
    """The slider of block `index`."""

    index: int


@dataclasses.dataclass(frozen=True)
class LinearKey:
    """The slider of the linear `name` (e.g. layers.3.mlp.down_proj)."""

    name: str


SliderKey = GlobalKey | BlockKey | LinearKey


def described(registry) -> list[tuple[str, str]]:
    """(name, description) of everything in a registry of methods or allocators."""
    return [(name, registry.get(name).description) for name in registry.names()]


def method_options() -> list[tuple[str, str]]:
    """The pruning methods to pick from (imported on first use: they load torch)."""
    from workbench.methods import METHODS

    return described(METHODS)


def allocator_options() -> list[tuple[str, str]]:
    """The allocators to pick from."""
    return described(ALLOCATORS)


def searches(allocator: str) -> bool:
    """Whether the allocator decides by pruning and probing (a loop the Agent screen runs in sight)."""
    return SEARCH in ALLOCATORS.get(allocator).needs


def param_fields(allocator: str, given: dict) -> list[tuple[str, str, str]]:
    """(key, text, hint) of the parameters the params screen edits, from the allocator's declarations:
    `given` completed with the defaults; recorded parameters (a search's decisions) are not edited."""
    declared = ALLOCATORS.get(allocator)
    values = {**declared.defaults, **given}
    return [(p.name, f"{values[p.name]:g}" if not p.is_word else values[p.name], p.hint)
            for p in declared.declared if not p.recorded]


def parse_allocator_params(allocator: str, typed: dict[str, str]) -> dict:
    """Typed allocator parameters, typed and checked by their declarations; ValueError naming one."""
    declared = ALLOCATORS.get(allocator)
    try:
        values = parse_typed(declared.declared, typed, PARAMS_WHERE)
        declared.params(values, where=PARAMS_WHERE)
    except WorkbenchError as error:
        key = error.where.removeprefix(PARAMS_WHERE).lstrip(".")
        raise ValueError(f"{key}: {error.what}" if key else error.what) from None
    return values


def _replace(plan: Plan, **changes) -> Plan:
    fresh = {"block_overrides": dict(plan.block_overrides), "linear_overrides": dict(plan.linear_overrides),
             "method_params": dict(plan.method_params), "allocator_params": dict(plan.allocator_params)}
    fresh.update(changes)
    return dataclasses.replace(plan, **fresh)


def _in_block(name: str, block: int) -> bool:
    return name.startswith(f"layers.{block}.")


def set_global(plan: Plan, value: float) -> tuple[Plan, str]:
    """A new global target; manual overrides stay on top."""
    return _replace(plan, sparsity=value), f"global target {100 * value:.1f}%"


def set_block(plan: Plan, block: int, value: float) -> tuple[Plan, str]:
    """A manual target for one block; it replaces the per-linear overrides inside that block."""
    new = _replace(plan)
    new.block_overrides[block] = value
    new.linear_overrides = {k: v for k, v in new.linear_overrides.items() if not _in_block(k, block)}
    return new, f"block {block} {100 * value:.1f}%"


def set_linear(plan: Plan, name: str, value: float) -> tuple[Plan, str]:
    """A manual target for one linear."""
    new = _replace(plan)
    new.linear_overrides[name] = value
    return new, f"{name} {100 * value:.1f}%"


def reset_block(plan: Plan, block: int) -> tuple[Plan, str]:
    """Drop the manual targets of a block and its linears (back to the allocator's value)."""
    new = _replace(plan)
    new.block_overrides.pop(block, None)
    new.linear_overrides = {k: v for k, v in new.linear_overrides.items() if not _in_block(k, block)}
    return new, f"block {block} back to {plan.allocator}"


def reset_linear(plan: Plan, name: str) -> tuple[Plan, str]:
    """Drop the manual target of one linear."""
    new = _replace(plan)
    new.linear_overrides.pop(name, None)
    return new, f"{name} back to its block"


def move_slider(plan: Plan, key: SliderKey, value: float) -> tuple[Plan, str]:
    """The edit of moving the slider `key` to `value`."""
    match key:
        case BlockKey(index):
            return set_block(plan, index, value)
        case LinearKey(name):
            return set_linear(plan, name, value)
    return set_global(plan, value)


def reset_slider(plan: Plan, key: SliderKey) -> tuple[Plan, str] | None:
    """The edit of dropping the manual value of slider `key`; None for the global target (it has none)."""
    match key:
        case BlockKey(index):
            return reset_block(plan, index)
        case LinearKey(name):
            return reset_linear(plan, name)
    return None


def choose_method(plan: Plan, method: str) -> tuple[Plan, str]:
    """Another pruning method; its parameters start from the defaults (the same method keeps them)."""
    if method == plan.method:
        return plan, f"method {method}"
    return _replace(plan, method=method, method_params={}), f"method {method}"


def choose_pattern(plan: Plan, pattern: str | None) -> tuple[Plan, str]:
    """Unstructured (None) or an N:M pattern; a pattern fixes every linear, so overrides are dropped."""
    if pattern:
        return _replace(plan, pattern=pattern, block_overrides={}, linear_overrides={}), f"pattern {pattern}"
    return _replace(plan, pattern=None), "unstructured"


def choose_allocator(plan: Plan, allocator: str) -> tuple[Plan, str]:
    """Another allocator: the sliders go back to its allocation (manual overrides are dropped)."""
    params = dict(plan.allocator_params) if allocator == plan.allocator else {}
    return (_replace(plan, allocator=allocator, allocator_params=params, block_overrides={}, linear_overrides={}),
            f"allocator {allocator}")


def set_allocator_params(plan: Plan, params: dict) -> tuple[Plan, str]:
    """New values for some parameters of the plan's allocator (the others are kept); manual overrides stay
    on top."""
    new = _replace(plan, allocator_params={**plan.allocator_params, **params})
    return new, f"{plan.allocator} {params_text(params)}"


# ----- structure: GLU width and dropped blocks ---------------------------------------------------------
WIDTH_STEP = 0.1  # one key press moves an expansion ratio by this much, on a grid of this step


def width_score_options() -> list[tuple[str, str]]:
    """The GLU neuron scores to pick from, each with the first line of its description (they load torch)."""
    from workbench.structured.width import NEURON_SCORES

    return [(name, (NEURON_SCORES.get(name).__doc__ or "").split(":")[0]) for name in NEURON_SCORES.names()]


def _structure(plan: Plan, **changes) -> Plan:
    """`plan` with a copy of its structure changed (the old plan and structure are left alone)."""
    old = plan.structure
    fresh = {"width_overrides": dict(old.width_overrides), "drop_blocks": list(old.drop_blocks),
             "drop_experts": {b: list(e) for b, e in old.drop_experts.items()}}
    fresh.update(changes)
    return _replace(plan, structure=dataclasses.replace(old, **fresh))


def _ratio_text(ratio: float | None) -> str:
    return "full width" if ratio is None else f"width {ratio:g}x"


def step_ratio(ratio: float | None, full: float, steps: int) -> float | None:
    """An expansion ratio moved `steps` grid steps (None: full width, `full` = intermediate / hidden); the
    first step from an in-between value lands on the grid, at least one step stays, reaching `full` is None."""
    current = full if ratio is None else ratio
    grid = current / WIDTH_STEP
    start = math.floor(grid + 1e-6) if steps > 0 else math.ceil(grid - 1e-6)
    moved = round(max(start + steps, 1) * WIDTH_STEP, 6)
    return None if moved >= full - 1e-9 else moved


def set_width(plan: Plan, ratio: float | None) -> tuple[Plan, str]:
    """A new global expansion ratio (None: full width); per-block widths stay on top."""
    return _structure(plan, width_ratio=ratio), f"global {_ratio_text(ratio)}"


def set_block_width(plan: Plan, block: int, ratio: float) -> tuple[Plan, str]:
    """An expansion ratio for one block (the block's full ratio keeps it at full width)."""
    new = _structure(plan)
    new.structure.width_overrides[block] = ratio
    return new, f"block {block} {_ratio_text(ratio)}"


def reset_block_width(plan: Plan, block: int) -> tuple[Plan, str]:
    """Drop a block's own width: it follows the global expansion ratio again."""
    new = _structure(plan)
    new.structure.width_overrides.pop(block, None)
    return new, f"block {block} width back to global"


def toggle_drop(plan: Plan, block: int, blocks: int) -> tuple[Plan, str]:
    """Drop block `block` from the forward pass, or bring it back; ValueError when it would drop every one
    of the model's `blocks` blocks."""
    dropped = list(plan.structure.drop_blocks)
    if block in dropped:
        dropped.remove(block)
        return _structure(plan, drop_blocks=dropped), f"keep block {block}"
    if len(dropped) + 1 >= blocks:
        raise ValueError("cannot drop every block: at least one must run")
    return _structure(plan, drop_blocks=sorted(dropped + [block])), f"drop block {block}"


DROP_RULES = [("bi", "the N blocks of lowest block influence (ShortGPT)"),
              ("angular", "the run of N blocks of lowest angular distance"),
              ("none", "clear every drop: all blocks run")]
NO_DROPS = "none"


def toggle_expert_drop(plan: Plan, block: int, expert: int) -> tuple[Plan, str]:
    """Drop a routed expert of a block, or bring it back (the engine refuses a drop below top-k)."""
    drops = {b: list(e) for b, e in plan.structure.drop_experts.items()}
    experts = drops.setdefault(block, [])
    if expert in experts:
        experts.remove(expert)
        label = f"keep expert {expert} of block {block}"
    else:
        experts.append(expert)
        label = f"drop expert {expert} of block {block}"
    return _structure(plan, drop_experts={b: sorted(e) for b, e in drops.items() if e}), label


def check_drop_count(count: int, blocks: int) -> None:
    """ValueError unless `count` blocks can be dropped from a model of `blocks` blocks (at least one runs)."""
    if count < 0:
        raise ValueError(f"cannot drop {count} blocks: N must be 0 or more")
    if count >= blocks:
        raise ValueError(f"cannot drop {count} of {blocks} blocks: at least one must run (N at most {blocks - 1})")


DROP_COUNT = "N"  # the one field of the "drop blocks by rule" form


def parse_drop_count(typed: dict[str, str]) -> int:
    """The N typed in the "drop blocks by rule" form; ValueError when it is not a whole number."""
    text = typed[DROP_COUNT].strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{DROP_COUNT}: not a whole number: {text!r}") from None


def set_drops(plan: Plan, chosen: list[int], blocks: int, rule: str) -> tuple[Plan, str]:
    """Drop exactly the blocks `chosen` by `rule` (bi, angular; none with no blocks clears every drop);
    ValueError when they are not distinct blocks of the model's `blocks` or would drop every one."""
    problem = drop_problem(list(chosen), blocks)
    if problem:
        raise ValueError(problem)
    picked = sorted(chosen)
    if not picked:
        return _structure(plan, drop_blocks=[]), "keep every block"
    return _structure(plan, drop_blocks=picked), f"drop {','.join(map(str, picked))} by {rule}"


WIDTH_DIVISOR_NONE = "none"


def width_divisor_options() -> list[tuple[str, str]]:
    """No divisor, then every allowed one (kept neuron counts rounded to a multiple of it)."""
    return [(WIDTH_DIVISOR_NONE, "kept neuron counts as the expansion ratio gives them"),
            *((str(d), f"kept neuron counts rounded to a multiple of {d}") for d in WIDTH_DIVISORS)]


def choose_width_divisor(plan: Plan, divisor: int | None) -> tuple[Plan, str]:
    """Round kept neuron counts to a multiple of `divisor` (None: no rounding); ValueError for a divisor
    not allowed."""
    if divisor is not None and divisor not in WIDTH_DIVISORS:
        raise ValueError(f"width divisor must be one of {', '.join(map(str, WIDTH_DIVISORS))}, got {divisor}")
    label = "no width divisor" if divisor is None else f"width divisor {divisor}"
    return _structure(plan, width_divisor=divisor), label


def choose_width_score(plan: Plan, score: str) -> tuple[Plan, str]:
    """Another GLU neuron score (which neurons a narrower width keeps)."""
    return _structure(plan, width_score=score), f"width score {score}"


# ----- the Agent screen's settings -------------------------------------------------------------------
LLM_POLICY = "llm"  # the policy that asks an endpoint (its URL and model are part of the form)
AGENT_HINTS = {  # one line each in the settings form: the declared hint, or one in the form's units
    **{p.name: p.hint for p in AGENT_PARAMS},
    "target": "global target sparsity in percent (the plan's by default)",
    "step": "largest raise of one block in one step, in points",
    "rollback": "roll a step back when perplexity (kl: exp of its rise) rises more than this (%)",
    "url": "llm: the API base, e.g. http://127.0.0.1:8080/v1",
    "model": "llm: the model name sent",
}


@dataclasses.dataclass(frozen=True)
class AgentForm:
    """The Agent screen's settings (fractions, not percent); `target` None follows the plan's global target.
    No key here: the LLM policy reads it from the environment, and it is never shown or saved."""

    policy: str
    target: float | None
    step: float
    max_steps: int
    rollback: float
    url: str
    model: str
    measure: str = AGENT_DEFAULTS["measure"]

    @classmethod
    def defaults(cls) -> "AgentForm":
        """The loop's defaults; URL and model from the environment (see `LLMSettings`)."""
        from workbench.agent.loop import AgentSettings

        s = AgentSettings()
        return cls("builtin", None, s.step, s.max_steps, s.rollback, s.llm.url, s.llm.model, s.measure)

    @property
    def asks_llm(self) -> bool:
        """Whether the policy asks an endpoint (URL and model apply)."""
        return self.policy == LLM_POLICY

    def settings(self):
        """The run's `AgentSettings`."""
        from workbench.agent.loop import AgentSettings
        from workbench.agent.policies.llm import LLMSettings

        return AgentSettings(step=self.step, max_steps=self.max_steps, rollback=self.rollback, measure=self.measure,
                             llm=LLMSettings(url=self.url, model=self.model))

    def plan_for(self, plan: Plan) -> Plan:
        """The plan the run starts from: `plan`'s method at the form's target."""
        return _replace(plan, sparsity=self.target if self.target is not None else plan.sparsity)


def agent_fields(form: AgentForm, plan_target: float) -> list[tuple[str, str, str]]:
    """(key, text, hint) of each setting, percentages in percent."""
    target = form.target if form.target is not None else plan_target
    texts = {"policy": form.policy, "target": f"{100 * target:g}", "step": f"{100 * form.step:g}",
             "max_steps": str(form.max_steps), "rollback": f"{100 * form.rollback:g}", "measure": form.measure,
             "url": form.url, "model": form.model}
    return [(key, text, AGENT_HINTS[key]) for key, text in texts.items()]


def _percent(key: str, text: str) -> float:
    try:
        return parse_percent(text)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None


def parse_agent_form(typed: dict[str, str], plan_target: float) -> AgentForm:
    """The typed settings, checked as the loop and the policy check them; ValueError naming one. A target
    equal to the plan's keeps following it."""
    from workbench.agent.policies import POLICIES, make_policy

    policy = typed["policy"].strip()
    if policy not in POLICIES.names():
        raise ValueError(f"policy: unknown {policy!r} (known: {', '.join(POLICIES.names())})")
    target = _percent("target", typed["target"])
    try:
        max_steps = int(typed["max_steps"])
    except ValueError:
        raise ValueError(f"max_steps: not a whole number: {typed['max_steps']!r}") from None
    form = AgentForm(policy, None if abs(target - plan_target) < 1e-9 else target, _percent("step", typed["step"]),
                     max_steps, _percent("rollback", typed["rollback"]), typed["url"].strip(), typed["model"].strip(),
                     typed["measure"].strip())
    try:
        settings = form.settings()
        settings.check()
        make_policy(policy, settings)
    except WorkbenchError as error:
        raise ValueError(f"{error.where.removeprefix('--agent-')}: {error.what}") from None
    return form
