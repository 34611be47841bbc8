"""Messages that background workers post to the app (workers never touch widgets)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

from workbench.domain.plan import Plan

if TYPE_CHECKING:  # torch stays unloaded until the model loads
    from workbench.agent.loop import AgentRun
    from workbench.agent.record import StepRecord
    from workbench.studies.compare import Comparison
    from workbench.engine.facade import Engine, EngineState
    from workbench.probes import ProbeResult
    from workbench.studies.sensitivity import Sensitivity
    from workbench.domain.session import Session


@dataclass
class WorkProgress(Message):
    """Progress of a worker: `kind` is its group (engine, prune, probe, ...)."""

    kind: str
    message: str
    fraction: float | None


@dataclass
class EngineReady(Message):
    """A model with `blocks` transformer blocks is loaded (and, when opening a session, that session is
    read from `path` and checked)."""

    engine: Engine
    blocks: int
    session: Session | None
    path: Path | None


@dataclass
class StateChanged(Message):
    """A new engine state. `plan` is what the state was computed for, `targets` its per-linear targets;
    `final` is False for refreshes while a prune is still running; `full` marks the end of a full
    calibration-aware prune."""

    state: EngineState
    plan: Plan | None
    targets: dict[str, float]
    final: bool
    full: bool


@dataclass
class DropsChosen(Message):
    """The blocks that `rule` (bi or angular) drops for N = `count`, from the dense model's depth scores."""

    count: int
    rule: str
    blocks: list[int]


@dataclass
class FullPruneNeeded(Message):
    """An incremental prune found no usable statistics for `plan` (none yet, or its method needs a Hessian
    that was not captured): the app starts a full prune instead."""

    plan: Plan


@dataclass
class ProbesDone(Message):
    """Probe results on the pruned model (`plan` applied) and the dense reference results."""

    results: list[ProbeResult]
    dense: dict[str, ProbeResult]
    plan: Plan | None


@dataclass
class HistogramReady(Message):
    """|W| histograms of one linear before and after pruning."""

    name: str
    edges: list[float]
    dense: list[int]
    pruned: list[int]


@dataclass
class Saved(Message):
    """A session file was written."""

    path: Path


@dataclass
class Compared(Message):
    """A comparison ended (finished, cancelled or failed: `comparison` holds the variants that finished)
    and gave the engine back, holding `holds`."""

    comparison: Comparison
    holds: Plan | None


@dataclass
class Scanned(Message):
    """A sensitivity scan ended (`sensitivity` None when it was cancelled or failed) and gave the engine
    back, holding `holds`."""

    sensitivity: Sensitivity | None
    holds: Plan | None


@dataclass
class AgentStepped(Message):
    """The agent run took a step."""

    record: StepRecord


@dataclass
class AgentHalted(Message):
    """The agent worker ended (the run ended, was paused or cancelled, or failed); the engine holds `holds`.
    Until the run has ended the engine stays lent to it."""

    run: AgentRun
    holds: Plan | None
