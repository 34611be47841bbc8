"""`Jobs`: runs job kinds from a table through an injected runner, tracks what runs per group, cancels
cooperatively and emits events to one subscriber.

Rules: a newer job replaces (cancels) the one of its group that runs or waits (except for kinds that do
not use the engine, such as autosaves, which may overlap). A job that holds the engine exclusively (a
comparison, a scan, an agent run) is refused while one of another group runs; other
engine jobs submitted meanwhile wait in a queue and start when it has ended."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from workbench.infra import errors
from workbench.jobs import events

if TYPE_CHECKING:
    from workbench.engine.facade import Engine

Subscriber = Callable[[events.Event], None]
Runner = Callable[["Job", Callable[[], None]], None]
ETA_AFTER = 0.02  # the fraction done before a time left is estimated


@dataclass(frozen=True)
class JobKind:
    """One kind of job: its `group` (a newer job of the group replaces an older one), whether it holds the
    engine `exclusive`ly, whether the user may cancel it (`cancellable`), whether it uses the `engine` at
    all, its `label` and its `body(job, **args)` (whose return value is the result)."""

    name: str
    group: str
    label: str
    body: Callable[..., Any]
    exclusive: bool = False
    cancellable: bool = True
    engine: bool = True


def inline(job: Job, run: Callable[[], None]) -> None:
    """The runner of tests and headless commands: run the job now, in this thread."""
    run()


class Job:
    """A submitted job and what its body gets: the engine, progress and state reports, the cancel check."""

    def __init__(self, jobs: Jobs, kind: JobKind, number: int, args: dict):
        self.jobs, self.kind, self.number, self.args = jobs, kind, number, args
        self.engine: Engine | None = jobs.engine
        self.started: float | None = None
        self._cancel = threading.Event()

    def __repr__(self) -> str:
        return f"Job({self.kind.name}#{self.number})"

    def cancelled(self) -> bool:
        """Whether the job was asked to stop (the engine's cancel check)."""
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def progress(self, step: str, fraction: float | None = None) -> None:
        """Report what the job does now and how far it is (None: unknown)."""
        if self.cancelled():
            return
        left = None
        if fraction is not None and ETA_AFTER <= fraction < 1 and self.started is not None:
            left = (self.jobs.clock() - self.started) * (1 - fraction) / fraction
        self.jobs.emit(events.Progress(self, step, fraction, left))

    def state(self, value: Any, always: bool = False) -> None:
        """Report an intermediate `value` (dropped once cancelled, unless `always`)."""
        if always or not self.cancelled():
            self.jobs.emit(events.State(self, value))


class Jobs:
    """Owns the engine once loaded and runs jobs of `kinds`; see the module docstring."""

    def __init__(self, kinds: Mapping[str, JobKind], runner: Runner = inline, subscriber: Subscriber | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.kinds = dict(kinds)
        self.clock = clock
        self.runner = runner
        self.subscriber = subscriber
        self.engine: Engine | None = None
        self._lock = threading.Lock()
        self._running: list[Job] = []
        self._queued: list[Job] = []
        self._numbers = itertools.count(1)

    def reporter(self, label: str) -> Job:
        """A job its caller runs itself (a headless command): its progress reports reach the subscriber as
        the same events as those of the jobs run here."""
        job = Job(self, JobKind("command", "command", label, lambda job: None), next(self._numbers), {})
        job.started = self.clock()
        return job

    def adopt(self, engine: Engine) -> None:
        """The engine jobs get from now on (a load job's result)."""
        self.engine = engine

    def emit(self, event: events.Event) -> None:
        if self.subscriber is not None:
            self.subscriber(event)

    # ----- what runs ------------------------------------------------------------------------------------
    @property
    def running_groups(self) -> frozenset[str]:
        """The groups with a job running or queued (cancelled ones that are still finishing do not count)."""
        with self._lock:
            return frozenset(j.kind.group for j in self._running + self._queued if not j.cancelled())

    def running(self, *groups: str) -> bool:
        """Whether a job of any of `groups` runs or waits (no groups: any job)."""
        busy = self.running_groups
        return bool(busy) if not groups else not busy.isdisjoint(groups)

    def cancellable(self) -> bool:
        """Whether a job the user may cancel runs or waits."""
        with self._lock:
            return any(j.kind.cancellable and not j.cancelled() for j in self._running + self._queued)

    @property
    def holder(self) -> Job | None:
        """The exclusive job that holds the engine now, if any."""
        with self._lock:
            return next((j for j in self._running if j.kind.exclusive and not j.cancelled()), None)

    # ----- submitting and cancelling ----------------------------------------------------------------------
    def submit(self, name: str, **args) -> Job | None:
        """Run a job of kind `name` with `args` for its body: now, or queued behind an exclusive job. None
        when refused (an exclusive job while another one runs or waits)."""
        kind = self.kinds[name]
        job = Job(self, kind, next(self._numbers), args)
        with self._lock:
            live = [j for j in self._running + self._queued if not j.cancelled()]
            if kind.exclusive and any(j.kind.exclusive and j.kind.group != kind.group for j in live):
                return None
            if kind.engine:
                for other in live:
                    if other.kind.group == kind.group:
                        other.cancel()
            dropped = self._drop_cancelled()
            self._queued.append(job)
            ready = self._take_ready()
        self._ended(dropped)
        self._start(ready)
        return job

    def cancel(self, *groups: str, everything: bool = False) -> list[Job]:
        """Cancel the cancellable jobs of `groups` (none: of every group; `everything`: also those the user
        may not cancel, when the app quits); returns the jobs cancelled."""
        with self._lock:
            chosen = [j for j in self._running + self._queued if (everything or j.kind.cancellable)
                      and not j.cancelled() and (not groups or j.kind.group in groups)]
            for job in chosen:
                job.cancel()
            dropped = self._drop_cancelled()
        self._ended(dropped)
        return chosen

    def _drop_cancelled(self) -> list[Job]:
        """Take the cancelled jobs out of the queue (under the lock); they never started."""
        dropped = [j for j in self._queued if j.cancelled()]
        self._queued = [j for j in self._queued if not j.cancelled()]
        return dropped

    def _ended(self, dropped: list[Job]) -> None:
        for job in dropped:
            self.emit(events.Cancelled(job))

    def _take_ready(self) -> list[Job]:
        """Move the queued jobs that may start now to the running list (under the lock)."""
        ready = []
        for job in list(self._queued):
            held = any(j.kind.exclusive and not j.cancelled() for j in self._running)
            if job.kind.engine and held:
                continue
            self._queued.remove(job)
            self._running.append(job)
            ready.append(job)
        return ready

    def _start(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.engine = self.engine
            self.runner(job, lambda job=job: self._run(job))

    def _run(self, job: Job) -> None:
        """Run one job's body (in the runner's thread) and emit how it ended."""
        job.started = self.clock()
        self.emit(events.Started(job))
        try:
            value = job.kind.body(job, **job.args)
            ending = events.Cancelled(job) if job.cancelled() else events.Result(job, value)
        except errors.Cancelled:
            ending = events.Cancelled(job)
        except Exception as error:  # noqa: BLE001 - every failure is one event
            ending = events.Cancelled(job) if job.cancelled() else events.Error(job, error)
        with self._lock:
            self._running.remove(job)
            ready = self._take_ready()
        self.emit(ending)
        self._start(ready)
