"""What each user edit does to a plan. UI-free: every function takes a plan and returns a new plan and
a short label for the history; the old plan is never modified. A slider says what it controls with a
`SliderKey`: the global target, one block, or one linear."""

from __future__ import annotations

import dataclasses

from workbench.allocators import ALLOCATORS
from workbench.errors import WorkbenchError
from workbench.plan import Plan

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


def parse_allocator_params(allocator: str, typed: dict[str, str]) -> dict[str, float]:
    """Typed allocator parameters as numbers, checked by the allocator itself; ValueError naming one."""
    values = {}
    for key, text in typed.items():
        try:
            values[key] = float(text)
        except ValueError:
            raise ValueError(f"{key}: not a number: {text!r}") from None
    try:
        ALLOCATORS.get(allocator).params(values, where=PARAMS_WHERE)
    except WorkbenchError as error:
        raise ValueError(f"{error.where.removeprefix(PARAMS_WHERE + '.')}: {error.what}") from None
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


def set_allocator_params(plan: Plan, params: dict[str, float]) -> tuple[Plan, str]:
    """New parameters for the plan's allocator; manual overrides stay on top."""
    shown = ", ".join(f"{k}={v:g}" for k, v in sorted(params.items()))
    return _replace(plan, allocator_params=dict(params)), f"{plan.allocator} {shown}"
