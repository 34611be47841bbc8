"""Messages that background workers post to the app (workers never touch widgets)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class WorkProgress(Message):
    """Progress of a worker: `kind` is its group (engine, prune, probe, ...)."""

    kind: str
    message: str
    fraction: float | None


@dataclass
class EngineReady(Message):
    """A model with `blocks` transformer blocks is loaded (and, when opening a session, that session is
    read and checked)."""

    engine: object
    blocks: int
    session: object | None
    path: object | None


@dataclass
class StateChanged(Message):
    """A new engine state. `plan` is what the state was computed for, `targets` its per-linear targets;
    `final` is False for refreshes while a prune is still running; `full` marks the end of a full
    calibration-aware prune."""

    state: object
    plan: object
    targets: dict
    final: bool
    full: bool


@dataclass
class ProbesDone(Message):
    """Probe results on the pruned model (`plan` applied) and the dense reference results."""

    results: list
    dense: dict
    plan: object


@dataclass
class HistogramReady(Message):
    """|W| histograms of one linear before and after pruning."""

    name: str
    edges: list
    dense: list
    pruned: list


@dataclass
class Saved(Message):
    """A session file was written."""

    path: object
