"""The sensitivity feature's job (UI-free: it runs in a worker thread and reports plain values): scan
every block of a plan with the default signal (`workbench.domain.signals`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.domain.plan import Plan
from workbench.domain.signals import DEFAULT_SIGNAL
from workbench.jobs.core import Job, JobKind

if TYPE_CHECKING:  # torch stays unloaded until the model loads
    from workbench.studies.sensitivity import Sensitivity


@dataclass(frozen=True)
class Scanned:
    """A sensitivity scan ended (`sensitivity` None when cancelled or failed); the engine holds `holds`."""

    sensitivity: Sensitivity | None
    holds: Plan | None


def sensitivity(job: Job, plan: Plan) -> None:
    """Scan every block; the engine is reported back in `plan` also after a cancel or a failure."""
    from workbench.studies.sensitivity import scan

    result = None
    try:
        result = scan(job.engine, plan, probe=DEFAULT_SIGNAL, progress=job.progress, cancel=job.cancelled)
    finally:
        job.state(Scanned(result, job.engine.plan), always=True)


KIND = JobKind("sensitivity", "sensitivity", "sensitivity scan", sensitivity, exclusive=True)
