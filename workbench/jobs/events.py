"""What a running job tells its subscriber: it started, how far it is, an intermediate state, and how it
ended (a result, an error or a cancel: exactly one of the three)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """Something about `job` (a `workbench.jobs.core.Job`; not imported here: core imports this module)."""

    job: Any


@dataclass(frozen=True)
class Started(Event):
    """The job began to run (after a wait in the queue, if any)."""


@dataclass(frozen=True)
class Progress(Event):
    """How far the job is: `step` (what it does now), `fraction` done (None: unknown), seconds `left`
    (None: not known yet)."""

    step: str
    fraction: float | None
    left: float | None

    def line(self) -> str:
        """One line: "label · step · 40% · 1m 20s left" (the step alone when it starts with the label)."""
        label = self.job.kind.label
        parts = [self.step] if self.step.startswith(label) else [label, self.step] if self.step else [label]
        if self.fraction is not None:
            parts.append(f"{self.fraction:.0%}")
        if self.left is not None:
            parts.append(f"{duration(self.left)} left")
        return " · ".join(parts)


@dataclass(frozen=True)
class State(Event):
    """An intermediate value from the job (a prune's state so far, an agent step, what a comparison
    gives back)."""

    value: Any


@dataclass(frozen=True)
class Result(Event):
    """The job ended with `value`."""

    value: Any


@dataclass(frozen=True)
class Error(Event):
    """The job failed with `error`."""

    error: BaseException


@dataclass(frozen=True)
class Cancelled(Event):
    """The job was cancelled (asked to, or replaced by a newer job of its group) and stopped."""


ENDINGS = (Result, Error, Cancelled)


def duration(seconds: float) -> str:
    """A short duration: "40s", "3m 05s", "1h 02m"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
