"""What the user asks for, as plain data: the calibration spec and the plan (method, allocator, global
target, N:M pattern, overrides), with their TOML form. No torch here, so the app can build plans before
the model (and torch) are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.errors import WorkbenchError

SEQUENTIAL = "sequential"
ONE_PASS = "one-pass"
MODES = (SEQUENTIAL, ONE_PASS)
MAX_SPARSITY = 0.99
DTYPES = ("auto", "float32", "bfloat16", "float16")  # "auto": bfloat16 on CUDA, float32 on the CPU


@dataclass
class CalibrationSpec:
    """Where calibration statistics come from. `hessian=None` captures X X^T only for methods that need
    it; True also gives reconstruction errors for the others."""

    source: str = "embedded"
    samples: int = 32
    seqlen: int = 256
    seed: int = 0
    mode: str = SEQUENTIAL
    hessian: bool | None = None


@dataclass
class Plan:
    """What the user asked for: method, allocator, global target, N:M pattern, manual overrides."""

    method: str = "wanda"
    method_params: dict = field(default_factory=dict)
    allocator: str = "uniform"
    allocator_params: dict = field(default_factory=dict)
    sparsity: float = 0.5
    pattern: str | None = None
    block_overrides: dict[int, float] = field(default_factory=dict)
    linear_overrides: dict[str, float] = field(default_factory=dict)


def check_fraction(value, where: str) -> float:
    """A target sparsity in [0, MAX_SPARSITY], or a one-line error naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WorkbenchError(where, f"must be a number, got {type(value).__name__}")
    if not 0 <= value < 1:
        raise WorkbenchError(where, f"sparsity must be in [0, 1), got {value}")
    if value > MAX_SPARSITY:
        raise WorkbenchError(where, f"sparsity above {MAX_SPARSITY} leaves a linear almost empty, got {value}")
    return float(value)


def plan_to_dict(plan: Plan) -> dict:
    """A plan as TOML-ready data."""
    return {
        "method": plan.method,
        "allocator": plan.allocator,
        "sparsity": plan.sparsity,
        "pattern": plan.pattern or "",
        "method_params": dict(plan.method_params),
        "allocator_params": dict(plan.allocator_params),
        "overrides": {
            "blocks": {str(k): v for k, v in sorted(plan.block_overrides.items())},
            "linears": dict(sorted(plan.linear_overrides.items())),
        },
    }


def plan_from_dict(data: dict) -> Plan:
    """The inverse of `plan_to_dict`, lenient (values are checked when the plan is applied; session files
    are checked key by key by `workbench.session`)."""
    overrides = data.get("overrides", {})
    return Plan(
        method=str(data["method"]),
        method_params=dict(data.get("method_params", {})),
        allocator=str(data.get("allocator", Plan.allocator)),
        allocator_params=dict(data.get("allocator_params", {})),
        sparsity=float(data["sparsity"]),
        pattern=data.get("pattern") or None,
        block_overrides={int(k): float(v) for k, v in overrides.get("blocks", {}).items()},
        linear_overrides={str(k): float(v) for k, v in overrides.get("linears", {}).items()},
    )


def weighted_mean(values, weights) -> float:
    """The `weights`-weighted mean of `values` (a parameter-weighted target or sparsity)."""
    values, weights = list(values), list(weights)
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)
