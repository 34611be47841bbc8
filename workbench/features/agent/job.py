"""The Agent feature's job (UI-free: it runs in a worker thread and reports plain values): step an agent
run until it ends or is paused."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.domain.plan import Plan
from workbench.jobs.core import Job, JobKind

if TYPE_CHECKING:  # torch stays unloaded until the model loads
    from workbench.agent.loop import AgentRun
    from workbench.agent.record import StepRecord


@dataclass(frozen=True)
class AgentStepped:
    """The agent run took a step."""

    record: StepRecord


@dataclass(frozen=True)
class AgentHalted:
    """The agent job ended (the run ended, was paused or cancelled, or failed); the engine holds `holds`."""

    run: AgentRun
    holds: Plan | None


def agent(job: Job, run, pause: threading.Event) -> None:
    """Step the agent run until it ends or `pause` is set; after a cancel or a failure the engine is at the
    run's last checkpoint."""
    try:
        while not job.cancelled() and not pause.is_set():
            record = run.step(job.progress, job.cancelled)
            if record is None:
                break
            job.state(AgentStepped(record))
    finally:
        job.state(AgentHalted(run, run.engine.plan), always=True)


KIND = JobKind("agent", "agent", "agent step", agent, exclusive=True)
