"""Terminal output shared by the headless commands: progress on stderr, chosen by `--progress`.

A command's progress goes through the job layer's events (`Jobs.reporter`), so a line says what the app's
activity line says: what runs, how far, the time left. `bar` rewrites one line on a terminal; `lines`
prints plain lines for a log or a pipe (under nohup): at most one every `LINES_EVERY_S` seconds, the first
once the work has run that long (short runs stay silent), and a last one when it is done; `none` prints
nothing; `auto` (the default) is `bar` on a terminal, `lines` when stderr is a file or a pipe, and nothing
when it is an in-memory stream (a program that runs the commands in-process reads only their results and
errors)."""

from __future__ import annotations

import io
import sys
import time

from workbench.jobs.core import Jobs
from workbench.jobs.events import Event, Progress

PROGRESS_MODES = ("auto", "bar", "lines", "none")
LINES_EVERY_S = 5.0
_run = {"mode": "auto", "command": "workbench"}


def set_progress_mode(mode: str, command: str) -> None:
    """The `--progress` of this run (auto, bar, lines or none) and its command (named on progress lines)."""
    _run.update(mode=mode, command=command)


def resolved_mode(mode: str | None = None, stream=None) -> str:
    """`mode` (default: the run's) with `auto` decided by what `stream` (default: stderr) is."""
    mode, stream = mode or _run["mode"], stream or sys.stderr
    if mode != "auto":
        return mode
    if stream.isatty():
        return "bar"
    try:
        stream.fileno()
    except (io.UnsupportedOperation, AttributeError, ValueError):
        return "none"
    return "lines"


class ProgressPrinter:
    """A subscriber of job events that shows their progress on `stream` as a bar or as throttled lines."""

    def __init__(self, mode: str, stream=None, clock=time.monotonic):
        self.mode, self.stream, self.clock = mode, stream or sys.stderr, clock
        self.started = clock()
        self.printed: float | None = None  # when the last line was printed

    def __call__(self, event: Event) -> None:
        if not isinstance(event, Progress):
            return
        fraction = event.fraction
        if self.mode == "bar":
            self.stream.write(f"\r\033[K{fraction or 0:4.0%} {event.step}")
            if fraction is not None and fraction >= 1:
                self.stream.write("\r\033[K")
        else:
            now = self.clock()
            done = fraction is not None and fraction >= 1
            due = now - (self.printed if self.printed is not None else self.started) >= LINES_EVERY_S
            if not (due or (done and self.printed is not None)):
                return
            self.printed = now
            self.stream.write(f"workbench: {event.line()}\n")
        self.stream.flush()


def progress_line(quiet: bool):
    """The progress callback `(message, fraction)` of this run on stderr, as `--progress` says (None when
    quiet or none)."""
    mode = resolved_mode()
    if quiet or mode == "none":
        return None
    return Jobs({}, subscriber=ProgressPrinter(mode)).reporter(_run["command"]).progress
