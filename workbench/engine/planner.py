"""The planner: checks a plan against the model once (a `CheckedPlan`) and turns it into per-linear targets
and assignments (allocator, then per-block and per-linear overrides; an N:M pattern fixes every target)."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.allocators import ALLOCATORS, DEFAULT_M, DENSE_STATISTICS, AllocationContext, Allocator, InfluenceSpec
from workbench.allocators._usage import usage_targets
from workbench.domain.plan import CalibrationSpec, Plan, check_fraction, weighted_mean
from workbench.engine.signals import BlockSignals
from workbench.engine.weights import Assignment
from workbench.infra.errors import WorkbenchError
from workbench.methods import METHODS, Method, Pattern, parse_pattern
from workbench.model.layout import LinearRef
from workbench.structured.shaper import Shaper


@dataclass(frozen=True)
class CheckedPlan:
    """A plan that passed `Planner.check`: its method and allocator resolved, their params completed with
    defaults, its N:M pattern parsed. The planner reads these instead of checking the plan again."""

    plan: Plan
    method: Method
    method_params: dict
    allocator: Allocator
    allocator_params: dict
    pattern: Pattern | None


class Planner:
    """Plans for one model (`linears`: its linears block by block)."""

    def __init__(self, linears: list[list[LinearRef]], calibration: CalibrationSpec, signals: BlockSignals, shaper: Shaper):
        self.linears = linears
        self.refs = {r.name: r for block in linears for r in block}
        self.calibration = calibration
        self.signals = signals
        self.shaper = shaper

    def block_numels(self, plan: Plan | None = None) -> list[int]:
        """Parameters in the running linears of each block (under `plan`'s structure, else the current one): 0 for
        a dropped block, a dropped expert's linears left out."""
        structure = plan.structure if plan is not None else self.shaper.current
        return [sum(r.numel for r in block if self.shaper.running(r, structure)) for block in self.linears]

    def check(self, plan: Plan) -> CheckedPlan:
        """Refuse an invalid plan with a one-line error naming the key; return it checked."""
        method = METHODS.get(plan.method, where="method")
        method_params = method.params(plan.method_params, where="method_params")
        allocator = ALLOCATORS.get(plan.allocator, where="allocator")
        allocator_params = allocator.params(plan.allocator_params, where="allocator_params")
        check_fraction(plan.sparsity, "sparsity")
        pattern = parse_pattern(plan.pattern)
        if pattern is not None and (plan.block_overrides or plan.linear_overrides):
            raise WorkbenchError("overrides", f"per-block and per-linear targets do not apply with pattern {pattern}")
        for block, value in plan.block_overrides.items():
            if not isinstance(block, int) or not 0 <= block < len(self.linears):
                raise WorkbenchError(f"overrides.blocks.{block}", f"no such block (the model has blocks 0..{len(self.linears) - 1})")
            check_fraction(value, f"overrides.blocks.{block}")
        for name, value in plan.linear_overrides.items():
            if not self.covered(name):
                raise WorkbenchError(f"overrides.linears.{name}", "no such linear or module (names look like "
                                                                  "layers.3.mlp.down_proj, or layers.3.mlp.experts.5 for an expert's linears)")
            check_fraction(value, f"overrides.linears.{name}")
        self.shaper.check(plan.structure)
        check_fraction(plan.expert_span, "expert_span")
        if plan.expert_span and not self.shaper.experts.blocks:
            raise WorkbenchError("expert_span", "the model has no routed experts")
        if self.calibration.hessian is False and method.needs_hessian:
            raise WorkbenchError("calibration.hessian", f"method {method.name} needs the Hessian; set hessian = true or leave it unset")
        return CheckedPlan(plan, method, method_params, allocator, allocator_params, pattern)

    def needs(self, checked: CheckedPlan) -> frozenset[str]:
        """What the plan's allocator reads (see `workbench.allocators.NEEDS`); nothing under a pattern."""
        return frozenset() if checked.pattern else checked.allocator.needs

    def allocate(self, checked: CheckedPlan) -> dict[str, float]:
        """Per-linear target sparsity (allocator, then block and linear overrides)."""
        plan = checked.plan
        if checked.pattern is not None:
            return {name: checked.pattern.sparsity for name in self.refs}
        ctx = AllocationContext(block_numels=self.block_numels(plan),
                                outlier_ratios=lambda M: self.signals.outlier_ratios(M, dense=True)[0],
                                influence=self.signals.influence)
        per_block = checked.allocator.allocate(ctx, plan.sparsity, **checked.allocator_params)
        for block, value in plan.block_overrides.items():
            per_block[block] = value
        targets = {ref.name: per_block[ref.block] for ref in self.refs.values()}
        if plan.expert_span:
            self._follow_usage(plan, per_block, targets)
        for name in sorted(plan.linear_overrides, key=lambda n: n.count(".")):  # a module first, then what is inside it
            targets.update(dict.fromkeys(self.covered(name), plan.linear_overrides[name]))
        return targets

    def _follow_usage(self, plan: Plan, per_block: list[float], targets: dict[str, float]) -> None:
        """Spread each MoE block's target over its running experts by router usage (`usage_targets`)."""
        usage = self.signals.expert_usage()
        for i, block in enumerate(self.linears):
            experts = sorted({r.expert for r in block if r.expert is not None and self.shaper.running(r, plan.structure)})
            if experts:
                spread = dict(zip(experts, usage_targets(per_block[i], [usage[i][e] for e in experts], plan.expert_span)))
                targets.update({r.name: spread[r.expert] for r in block if r.expert in spread})

    def covered(self, name: str) -> list[str]:
        """The linears an override name sets: the linear of that name, or every linear inside the module of that
        name (an expert `layers.3.mlp.experts.5`, a block's experts `layers.3.mlp.experts`, its attention)."""
        if name in self.refs:
            return [name]
        return [n for n in self.refs if n.startswith(f"{name}.")]

    def block_targets(self, checked: CheckedPlan, targets: dict[str, float] | None = None) -> list[float]:
        """Parameter-weighted target of each block (of the given per-linear `targets`, else the plan's)."""
        targets = self.allocate(checked) if targets is None else targets
        running = [[r for r in block if self.shaper.running(r, checked.plan.structure)] or block for block in self.linears]
        return [weighted_mean((targets[r.name] for r in block), (r.numel for r in block)) for block in running]

    def needs_dense_statistics(self, checked: CheckedPlan) -> bool:
        """Whether the plan reads the dense model's statistics: its allocator, or a data-aware width score."""
        structure = checked.plan.structure
        return DENSE_STATISTICS in self.needs(checked) or bool(checked.plan.expert_span) or (
            structure.width_score == "data" and bool(self.shaper.widths(structure)))

    def assignments(self, checked: CheckedPlan) -> dict[str, Assignment]:
        """What every linear is pruned with under the plan."""
        params = tuple(sorted(checked.method_params.items()))
        pattern = str(checked.pattern) if checked.pattern else None
        return {name: Assignment(checked.method.name, params, round(target, 9), pattern)
                for name, target in self.allocate(checked).items()}

    def outlier_M(self, checked: CheckedPlan | None) -> float:
        """The M of the outlier ratios to show: the plan's allocator's, else the default."""
        if checked is None:
            return DEFAULT_M
        return checked.allocator.outlier_M(checked.allocator_params)

    def influence_spec(self, checked: CheckedPlan) -> InfluenceSpec | None:
        """The influence scores the plan's allocator reads, or None."""
        allocator = checked.allocator
        return allocator.influence(checked.allocator_params)
