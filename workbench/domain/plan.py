"""What the user asks for, as plain data: the calibration spec and the plan (method, allocator, global
target, N:M pattern, overrides), with their TOML form. No torch here, so the app can build plans before
the model (and torch) are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.infra.errors import WorkbenchError

SEQUENTIAL = "sequential"
ONE_PASS = "one-pass"
MODES = (SEQUENTIAL, ONE_PASS)
EXPERT_FALLBACKS = ("pooled", "magnitude")  # statistics of an expert the router sent too few tokens
MAX_SPARSITY = 0.99
WIDTH_DIVISORS = (32, 64, 128, 256)  # kept neuron counts may be rounded to a multiple of one of these
DROP_BY = ("bi", "angular")  # block influence (ShortGPT), angular distance (Gromov et al.)
EXPERT_SCORES = ("reap", "frequency")  # REAP saliency, tokens routed (workbench.structured.experts)
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
    expert_fallback: str = "pooled"  # statistics of a routed expert that saw too few tokens: pooled | magnitude
    expert_min_tokens: int = 8  # "too few": below this many calibration tokens

    @property
    def generated(self) -> "SelfSource | None":
        """The self-generated source this spec names (`self[:N][:reasoning]`), checked; None for text sources."""
        return SelfSource.parse(self.source, self.samples)

    @property
    def text(self) -> str:
        """The text source of what needs text (held-out evaluation, LayerIF's windows, healing data): the
        calibration source, or `embedded` when calibration is self-generated."""
        return "embedded" if self.generated else self.source


SELF = "self"


@dataclass(frozen=True)
class SelfSource:
    """Calibration windows from the dense model's own chat replies: `windows` generated (the first
    `samples` calibrate), with the reasoning probe's training-side problems among the prompts when
    `reasoning`."""

    windows: int
    reasoning: bool

    @classmethod
    def parse(cls, source: str, samples: int) -> "SelfSource | None":
        """`self`, `self:N`, `self:reasoning` or `self:N:reasoning`; None for any other source; one error
        naming the source when N is not a whole number >= 1 or fewer than `samples`."""
        parts = source.split(":")
        if parts[0] != SELF:
            return None
        reasoning = parts[-1] == "reasoning"
        count = parts[1:-1] if reasoning else parts[1:]
        where = f"calibration {source!r}"
        if len(count) > 1 or (count and not count[0].strip().isdigit()):
            raise WorkbenchError(where, "expected self, self:N, self:reasoning or self:N:reasoning (N windows, a whole number)")
        windows = int(count[0]) if count else samples
        if windows < 1:
            raise WorkbenchError(where, f"self:{windows}: at least one window must be generated")
        if windows < samples:
            raise WorkbenchError(where, f"self:{windows} generates {windows} windows, fewer than the {samples} of --samples")
        return cls(windows, reasoning)


@dataclass
class Structure:
    """Structured pruning: GLU width as an expansion ratio (kept neurons / hidden size; None: full width),
    globally and per block, with its neuron score and rounding divisor, the blocks dropped from the
    forward pass, and the routed experts dropped per block of a mixture of experts (original numbers)."""

    width_ratio: float | None = None
    width_score: str = "ppm"
    width_divisor: int | None = None
    width_overrides: dict[int, float] = field(default_factory=dict)
    drop_blocks: list[int] = field(default_factory=list)
    drop_experts: dict[int, list[int]] = field(default_factory=dict)

    def is_dense(self) -> bool:
        """Whether nothing is removed."""
        return self.width_ratio is None and not self.width_overrides and not self.drop_blocks and not self.drop_experts


@dataclass
class Plan:
    """What the user asked for: method, allocator, global target, N:M pattern, manual overrides, and the
    structure (width and depth) the unstructured pruning applies to."""

    method: str = "wanda"
    method_params: dict = field(default_factory=dict)
    allocator: str = "uniform"
    allocator_params: dict = field(default_factory=dict)
    sparsity: float = 0.5
    pattern: str | None = None
    block_overrides: dict[int, float] = field(default_factory=dict)
    linear_overrides: dict[str, float] = field(default_factory=dict)
    structure: Structure = field(default_factory=Structure)
    expert_span: float = 0.0  # mixture of experts: per-expert targets follow router usage (workbench.allocators._usage)


def check_fraction(value, where: str) -> float:
    """A target sparsity in [0, MAX_SPARSITY], or a one-line error naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WorkbenchError(where, f"must be a number, got {type(value).__name__}")
    if not 0 <= value < 1:
        raise WorkbenchError(where, f"sparsity must be in [0, 1), got {value}")
    if value > MAX_SPARSITY:
        raise WorkbenchError(where, f"sparsity above {MAX_SPARSITY} leaves a linear almost empty, got {value}")
    return float(value)


def check_structure(structure: Structure, where: str = "structure") -> None:
    """Refuse values no model can take (a one-line error naming the key); the planner checks the rest
    against the model (block numbers, neuron scores)."""
    ratios = ([("width_ratio", structure.width_ratio)] if structure.width_ratio is not None else []) + \
        [(f"width_overrides.{b}", r) for b, r in structure.width_overrides.items()]
    for key, ratio in ratios:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
            raise WorkbenchError(f"{where}.{key}", f"an expansion ratio (kept neurons / hidden size) must be > 0, got {ratio!r}")
    if structure.width_divisor is not None and structure.width_divisor not in WIDTH_DIVISORS:
        raise WorkbenchError(f"{where}.width_divisor", f"must be one of {', '.join(map(str, WIDTH_DIVISORS))}, got {structure.width_divisor!r}")
    problem = drop_problem(structure.drop_blocks)
    if problem:
        raise WorkbenchError(f"{where}.drop_blocks", problem)


def drop_problem(drops: list, blocks: int | None = None, asked: int | None = None) -> str | None:
    """The one check of a list of blocks to drop, wherever it comes from (session, CLI, app): distinct
    block numbers of the model (`blocks`, when known), not every block, and exactly `asked` of them when
    a count was asked for. The reason it is refused, or None."""
    if any(isinstance(b, bool) or not isinstance(b, int) for b in drops):
        return f"expected block numbers, got {drops!r}"
    twice = sorted({b for b in drops if drops.count(b) > 1})
    if twice:
        return f"block {twice[0]} chosen twice in {','.join(map(str, drops))}"
    bad = [b for b in drops if b < 0 or (blocks is not None and b >= blocks)]
    if bad:
        return f"no block {bad[0]}" + (f" (the model has blocks 0..{blocks - 1})" if blocks is not None else "")
    if blocks is not None and len(drops) >= blocks:
        return f"cannot drop every block: at least one of the {blocks} must run"
    if asked is not None and len(drops) != asked:
        return f"{asked} blocks to drop asked, but {len(drops)} named ({','.join(map(str, sorted(drops)))})"
    return None


def structure_to_dict(structure: Structure) -> dict:
    """A structure as TOML-ready data (unset values left out)."""
    data: dict = {"width_score": structure.width_score}
    if structure.width_ratio is not None:
        data["width_ratio"] = structure.width_ratio
    if structure.width_divisor is not None:
        data["width_divisor"] = structure.width_divisor
    data["width_overrides"] = {str(k): v for k, v in sorted(structure.width_overrides.items())}
    data["drop_blocks"] = list(structure.drop_blocks)
    if structure.drop_experts:
        data["drop_experts"] = {str(b): list(e) for b, e in sorted(structure.drop_experts.items())}
    return data


def structure_from_dict(data: dict) -> Structure:
    """The inverse of `structure_to_dict`, lenient (checked when the plan is applied)."""
    return Structure(
        width_ratio=None if data.get("width_ratio") is None else float(data["width_ratio"]),
        width_score=str(data.get("width_score", Structure.width_score)),
        width_divisor=None if data.get("width_divisor") is None else int(data["width_divisor"]),
        width_overrides={int(k): float(v) for k, v in data.get("width_overrides", {}).items()},
        drop_blocks=sorted(int(b) for b in data.get("drop_blocks", [])),
        drop_experts={int(b): sorted(int(x) for x in e) for b, e in data.get("drop_experts", {}).items()},
    )


def plan_to_dict(plan: Plan) -> dict:
    """A plan as TOML-ready data (the structure only when it removes something)."""
    data = {
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
    if not plan.structure.is_dense():
        data["structure"] = structure_to_dict(plan.structure)
    if plan.expert_span:
        data["expert_span"] = plan.expert_span
    return data


def plan_from_dict(data: dict) -> Plan:
    """The inverse of `plan_to_dict`, lenient (values are checked when the plan is applied; session files
    are checked key by key by `workbench.domain.session`)."""
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
        structure=structure_from_dict(data.get("structure", {})),
        expert_span=float(data.get("expert_span", 0.0)),
    )


def weighted_mean(values, weights) -> float:
    """The `weights`-weighted mean of `values` (a parameter-weighted target or sparsity)."""
    values, weights = list(values), list(weights)
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)
