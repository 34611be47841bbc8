"""The healing feature's job (UI-free: it runs in a worker thread and reports plain values): probe the
pruned model, heal it (resuming a cancelled run from its checkpoint when one matches), probe again."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.domain.plan import Plan
from workbench.infra.errors import WorkbenchError
from workbench.jobs.core import Job, JobKind

if TYPE_CHECKING:  # torch stays unloaded until the model loads
    from workbench.probes import ProbeResult
    from workbench.recovery.record import HealRecord
    from workbench.recovery.spec import HealSpec


@dataclass(frozen=True)
class HealEnded:
    """A healing run ended: `record` None when it was cancelled or failed (the model is as before, and a
    checkpoint waits for the next run); the probes after it, the dense reference; the engine holds `holds`."""

    record: HealRecord | None
    holds: Plan | None
    after: list[ProbeResult] = field(default_factory=list)
    dense: dict[str, ProbeResult] = field(default_factory=dict)


def heal(job: Job, spec: HealSpec, probes: tuple[str, ...], checkpoint: Path) -> None:
    """Probe, heal and probe again; the engine is reported back also after a cancel or a failure."""
    from workbench.recovery.record import HealRecord

    engine, record, after = job.engine, None, []
    try:
        before = engine.probe(list(probes))
        healed = None
        if checkpoint.is_file():
            try:
                healed = engine.heal(spec, job.progress, job.cancelled, checkpoint, resume=checkpoint)
            except WorkbenchError:  # another plan's or spec's run: start afresh
                checkpoint.unlink(missing_ok=True)
        if healed is None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            healed = engine.heal(spec, job.progress, job.cancelled, checkpoint)
        checkpoint.unlink(missing_ok=True)
        after = engine.probe(list(probes))
        record = HealRecord.of(healed, before)
    finally:
        dense = {n: engine.dense_probes[n] for n in probes if n in engine.dense_probes}
        job.state(HealEnded(record, engine.plan, after, dense), always=True)


@dataclass(frozen=True)
class HealRestored:
    """A session's healing is back on the model (`record`), or could not be put back (`problem`)."""

    record: HealRecord | None
    holds: Plan | None
    problem: str = ""


def restore(job: Job, record: HealRecord, path: Path) -> None:
    """Put an opened session's healing back from the trained tensors beside it (SHA-256 and digest checked)."""
    from workbench.domain.session import replay_healing

    engine, problem = job.engine, ""
    try:
        replay_healing(engine, record, path, True, job.progress, job.cancelled)
    except WorkbenchError as error:
        problem, record = str(error), None
    finally:
        job.state(HealRestored(record, engine.plan, problem), always=True)


KIND = JobKind("heal", "heal", "healing", heal, exclusive=True)
RESTORE = JobKind("heal-restore", "heal", "putting the session's healing back", restore, exclusive=True, cancellable=False)
