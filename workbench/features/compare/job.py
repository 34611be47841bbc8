"""The Compare feature's job (UI-free: it runs in a worker thread and reports plain values): run the
queued variants; what finished is reported also after a cancel or a failure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.domain.plan import Plan
from workbench.jobs.core import Job, JobKind

if TYPE_CHECKING:  # torch stays unloaded until the model loads
    from workbench.studies.compare import Comparison


@dataclass(frozen=True)
class Compared:
    """A comparison ended (finished, cancelled or failed: `comparison` holds the variants that finished); the
    engine holds `holds`."""

    comparison: Comparison
    holds: Plan | None


def compare(job: Job, variants: list, probes: list[str], heal=None) -> None:
    """Run the comparison (each variant also healed with `heal`, a HealSpec, when given); what finished is
    reported also after a cancel or a failure."""
    from workbench.studies.compare import Comparison, run_comparison

    engine, finished, comparison = job.engine, [], None
    try:
        comparison = run_comparison(engine, variants, probes, progress=job.progress, cancel=job.cancelled,
                                    on_result=finished.append, heal=heal)
    finally:
        if comparison is None:
            dense = [engine.dense_probes[n] for n in probes if n in engine.dense_probes]
            comparison = Comparison(probes, dense=dense, results=finished, heal=heal.to_dict() if heal else None)
        job.state(Compared(comparison, engine.plan), always=True)


KIND = JobKind("compare", "compare", "comparison", compare, exclusive=True)
