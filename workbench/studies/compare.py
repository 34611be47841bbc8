"""Side-by-side comparison of variants: named plans evaluated one after another on one engine, each by a
full calibration-aware prune from the dense weights (the dense statistics and the dense probe reference
are computed once and shared), then the same probes. Every probe result keeps its units (per item, or per
chunk of tokens), so `Comparison.row` gives each delta vs dense and each pairwise difference with its paired
bootstrap interval, flips, and the best (or tied) variants, from a saved file without the model
(`workbench.studies.intervals`).

A comparison file is TOML (schema below, version 2; version 1, without units, is still read);
`workbench replay FILE --check` re-runs it whole and checks every variant's probes against their recorded
tolerances.

    version = 2
    kind = "comparison"
    probes = ["perplexity", "arithmetic"]   # the probe names, in order
    size = "quick"                          # quick | full
    [model]      spec, device, dtype        # as in a session
    [calibration]  source, samples, seqlen, seed, mode, hessian
    [heal]  ...                             # optional: the healing spec of the NAME+heal variants (compare --heal)
    [[dense_probes]]  ...                   # each a probe result with its [dense_probes.units], as in a session
    [[variants]]
    name = "owl"                            # unique within the comparison
    session = "owl.toml"                    # optional: the variant's own session beside this file
    seconds = 24.1                          # the full prune's time
    prepare_seconds = 0.0                   # the allocator's scoring or search before it (0 when cached)
    achieved = 0.7001
    params_nonzero = 31734000
    block_targets = [0.66, 0.7, ...]        # parameter-weighted target of each block
    healed = true                           # optional: the variant before it, healed ([heal]); seconds: healing's
    [variants.plan]  ...                    # a plan, as in a session
    [[variants.probes]] ...                 # its probe results, with their [variants.probes.units]
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

from workbench.allocators import DEFAULT_M
from workbench.domain.plan import Plan
from workbench.engine.facade import Engine
from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.probes import ProbeResult
from workbench.studies.intervals import Row, probe_row

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]


@dataclass
class Variant:
    """A named plan to compare."""

    name: str
    plan: Plan


@dataclass
class VariantResult:
    """One evaluated variant: its probes, allocation per block, achieved sparsity, non-zero parameters,
    prune time and the time its allocator spent scoring or searching first (`prepare_seconds`)."""

    name: str
    plan: Plan
    probes: list[ProbeResult]
    block_targets: list[float]
    achieved: float
    params_nonzero: int
    seconds: float
    session: str | None = None
    prepare_seconds: float = 0.0
    healed: bool = False  # the variant before it, healed with the comparison's `heal` spec (`seconds`: healing's)

    def probe(self, name: str) -> ProbeResult | None:
        """This variant's result for one probe."""
        return next((p for p in self.probes if p.name == name), None)


@dataclass
class Comparison:
    """Variants evaluated on one model and calibration spec, with the dense reference."""

    probes: list[str]
    size: str = "quick"
    dense: list[ProbeResult] = field(default_factory=list)
    results: list[VariantResult] = field(default_factory=list)
    outlier_ratios: list[float] | None = None  # per block, of the dense model (for the allocation plot)
    heal: dict | None = None  # the healing spec of the "NAME+heal" variants (HealSpec.to_dict), when healed

    def dense_probe(self, name: str) -> ProbeResult | None:
        """The dense reference for one probe."""
        return next((p for p in self.dense if p.name == name), None)

    def best(self, probe: str) -> str | None:
        """The name of the variant with the top score on `probe` (None when no variant has it), whether or
        not that is a real win: `row(probe).best` is the one to mark."""
        scored = [(r.probe(probe), r.name) for r in self.results if r.probe(probe) is not None]
        if not scored:
            return None
        higher = scored[0][0].higher_is_better
        return (max if higher else min)(scored, key=lambda pair: pair[0].score)[1]

    def row(self, probe: str) -> Row:
        """`probe` across the variants: deltas vs dense and pairwise differences with their paired 95%
        intervals, flips vs dense, and the best variant or the tied ones (`workbench.studies.intervals`)."""
        return probe_row(probe, self.dense_probe(probe), {r.name: p for r in self.results if (p := r.probe(probe)) is not None})

    def rows(self) -> list[Row]:
        """`row` of every probe, in order."""
        return [self.row(probe) for probe in self.probes]

    def result(self, name: str) -> VariantResult:
        """The result of the variant called `name`."""
        for r in self.results:
            if r.name == name:
                return r
        raise WorkbenchError("variant", f"no variant {name!r} (have: {', '.join(r.name for r in self.results)})")


def check_variants(engine: Engine, variants: list[Variant]) -> None:
    """Refuse duplicate names and invalid plans before anything runs."""
    seen = set()
    for v in variants:
        if v.name in seen:
            raise WorkbenchError(f"variant {v.name!r}", "two variants have this name")
        seen.add(v.name)
        try:
            engine.check_plan(v.plan)
        except WorkbenchError as exc:
            raise WorkbenchError(f"variant {v.name!r}: {exc.where}", exc.what) from None


def grid(methods: list[str], allocators: list[str], sparsity: float, pattern: str | None = None,
         allocator_params: dict[str, dict] | None = None) -> list[Variant]:
    """Variants for every method x allocator at one sparsity, named "allocator" (one method) or
    "method/allocator"."""
    params = allocator_params or {}
    return [Variant(a if len(methods) == 1 else f"{m}/{a}",
                    Plan(method=m, allocator=a, allocator_params=dict(params.get(a, {})), sparsity=sparsity, pattern=pattern))
            for m in methods for a in allocators]


def run_comparison(engine: Engine, variants: list[Variant], probes: list[str], size: str = "quick",
                   progress: Progress | None = None, cancel: Cancel | None = None,
                   on_result: Callable[[VariantResult], None] | None = None, heal=None) -> Comparison:
    """Evaluate `variants` one after another, each a full prune from dense then `probes`; the dense
    reference is measured first, once. With `heal` (a `workbench.recovery.spec.HealSpec`) each variant is
    then healed and probed again, as the variant "NAME+heal". Cancelling raises `Cancelled` (the engine is
    left in a consistent state, the last variant that finished or the state before); `on_result` sees each
    finished variant, so a caller keeps what finished."""
    check_variants(engine, variants)
    comparison = Comparison(probes=list(probes), size=size, heal=heal.to_dict() if heal is not None else None)
    say = progress or (lambda message, fraction: None)
    total = len(variants)

    def stage(n: int, label: str) -> Progress:
        return lambda message, fraction: say(f"[{n + 1}/{total}] {label}: {message}", (n + max(0.0, min(fraction or 0.0, 1.0))) / max(total, 1))

    say("dense reference probes", 0.0)
    comparison.dense = engine.dense_reference(probes, size, cancel)
    for n, variant in enumerate(variants):
        if cancel is not None and cancel():
            raise Cancelled()
        start = time.perf_counter()
        engine.prepare(variant.plan, stage(n, variant.name), cancel)
        prepared = time.perf_counter()
        engine.prune(variant.plan, progress=stage(n, f"{variant.name} prune"), cancel=cancel)
        seconds = time.perf_counter() - prepared
        results = engine.probe(probes, size, progress=stage(n, f"{variant.name} probes"), cancel=cancel)
        state = engine.state()
        result = VariantResult(
            name=variant.name, plan=variant.plan, probes=results, block_targets=[b.target for b in state.blocks],
            achieved=state.achieved, params_nonzero=state.params_nonzero, seconds=seconds,
            prepare_seconds=prepared - start,
        )
        finished = [result]
        if heal is not None:
            healed = engine.heal(heal, stage(n, f"{variant.name} healing"), cancel)
            results = engine.probe(probes, size, progress=stage(n, f"{variant.name}+heal probes"), cancel=cancel)
            finished.append(dataclasses.replace(result, name=f"{variant.name}+heal", probes=results,
                                                seconds=healed.seconds, prepare_seconds=0.0, healed=True))
        for result in finished:
            comparison.results.append(result)
            if on_result is not None:
                on_result(result)
    comparison.outlier_ratios = engine.outlier_ratios(DEFAULT_M, dense=True)[0]
    say("comparison done", 1.0)
    return comparison
