"""The job layer (`workbench.jobs`) seen from Textual: jobs run in thread workers of the app, and their
events come back to the app as `JobEvent` messages (posted from the worker threads)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Callable

from textual.app import App
from textual.message import Message

from workbench.jobs.core import Job, JobKind, Jobs
from workbench.jobs.events import Event
from workbench.jobs.kinds import KINDS


@dataclass
class JobEvent(Message):
    """An event of a job (`workbench.jobs.events`)."""

    event: Event


class JobBridge:
    """`Jobs` for `app` (the core kinds and the features' `kinds`): a runner that starts Textual thread workers (from the app's thread, also when a
    queued job starts from a worker's) and a subscriber that posts each event to the app."""

    def __init__(self, app: App, kinds: tuple[JobKind, ...] = ()):
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self.jobs = Jobs({**KINDS, **{kind.name: kind for kind in kinds}}, runner=self.run, subscriber=self.deliver)

    def bind(self) -> None:
        """Remember the app's event loop (call from the app's thread once it runs)."""
        self._loop, self._thread = asyncio.get_running_loop(), threading.get_ident()

    def run(self, job: Job, body: Callable[[], None]) -> None:
        def start() -> None:
            self.app.run_worker(body, name=job.kind.name, group=job.kind.group, thread=True, exit_on_error=False)

        if self._loop is None or threading.get_ident() == self._thread:
            start()
        else:
            self._loop.call_soon_threadsafe(start)

    def deliver(self, event: Event) -> None:
        self.app.post_message(JobEvent(event))
