"""What each user edit does to a plan. UI-free: every function takes a plan and returns a new plan and
a short label for the history; the old plan is never modified."""

from __future__ import annotations

import dataclasses

PARAM_HINTS = {
    "M": "outlier threshold: a score above M x the block mean is an outlier (> 0)",
    "lambda": "targets stay within the global target +- lambda, in [0, 1)",
}


def parse_allocator_params(values: dict[str, str]) -> dict[str, float]:
    """Parse typed allocator parameters (numbers; OWL's M > 0, lambda in [0, 1)); ValueError naming one."""
    out = {}
    for key, text in values.items():
        try:
            out[key] = float(text)
        except ValueError:
            raise ValueError(f"{key}: not a number: {text!r}") from None
    if "M" in out and out["M"] <= 0:
        raise ValueError("M must be > 0")
    if "lambda" in out and not 0 <= out["lambda"] < 1:
        raise ValueError("lambda must be in [0, 1)")
    return out


def _replace(plan, **changes):
    fresh = {"block_overrides": dict(plan.block_overrides), "linear_overrides": dict(plan.linear_overrides),
             "method_params": dict(plan.method_params), "allocator_params": dict(plan.allocator_params)}
    fresh.update(changes)
    return dataclasses.replace(plan, **fresh)


def _in_block(name: str, block: int) -> bool:
    return name.startswith(f"layers.{block}.")


def set_global(plan, value: float):
    """A new global target; manual overrides stay on top."""
    return _replace(plan, sparsity=value), f"global target {100 * value:.1f}%"


def set_block(plan, block: int, value: float):
    """A manual target for one block; it replaces the per-linear overrides inside that block."""
    new = _replace(plan)
    new.block_overrides[block] = value
    new.linear_overrides = {k: v for k, v in new.linear_overrides.items() if not _in_block(k, block)}
    return new, f"block {block} {100 * value:.1f}%"


def set_linear(plan, name: str, value: float):
    """A manual target for one linear."""
    new = _replace(plan)
    new.linear_overrides[name] = value
    return new, f"{name} {100 * value:.1f}%"


def reset_block(plan, block: int):
    """Drop the manual targets of a block and its linears (back to the allocator's value)."""
    new = _replace(plan)
    new.block_overrides.pop(block, None)
    new.linear_overrides = {k: v for k, v in new.linear_overrides.items() if not _in_block(k, block)}
    return new, f"block {block} back to {plan.allocator}"


def reset_linear(plan, name: str):
    """Drop the manual target of one linear."""
    new = _replace(plan)
    new.linear_overrides.pop(name, None)
    return new, f"{name} back to its block"


def choose_method(plan, method: str):
    """Another pruning method; its parameters start from the defaults."""
    return _replace(plan, method=method, method_params={}), f"method {method}"


def choose_pattern(plan, pattern: str | None):
    """Unstructured (None) or an N:M pattern; a pattern fixes every linear, so overrides are dropped."""
    if pattern:
        return _replace(plan, pattern=pattern, block_overrides={}, linear_overrides={}), f"pattern {pattern}"
    return _replace(plan, pattern=None), "unstructured"


def choose_allocator(plan, allocator: str):
    """Another allocator: the sliders go back to its allocation (manual overrides are dropped)."""
    params = dict(plan.allocator_params) if allocator == plan.allocator else {}
    return (_replace(plan, allocator=allocator, allocator_params=params, block_overrides={}, linear_overrides={}),
            f"allocator {allocator}")


def set_allocator_params(plan, params: dict):
    """New allocator parameters (for OWL: M and lambda); manual overrides stay on top."""
    shown = ", ".join(f"{k}={v:g}" for k, v in sorted(params.items()))
    return _replace(plan, allocator_params=dict(params)), f"{plan.allocator} {shown}"
