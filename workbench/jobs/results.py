"""What the job bodies report (as a state or a result): plain values the app and the CLI render."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.domain.plan import Plan

if TYPE_CHECKING:  # torch stays unloaded until the model loads
    from workbench.domain.session import Session
    from workbench.engine.facade import Engine, EngineState
    from workbench.probes import ProbeResult


@dataclass(frozen=True)
class Loaded:
    """A model with `blocks` transformer blocks is loaded (and, when opening a session, that session is read
    from `path` and checked)."""

    engine: Engine
    blocks: int
    session: Session | None
    path: Path | None


@dataclass(frozen=True)
class Pruned:
    """An engine state. `plan` is what it was computed for, `targets` its per-linear targets; `final` is False
    while a prune still runs; `full` marks the end of a full calibration-aware prune."""

    state: EngineState
    plan: Plan | None
    targets: dict[str, float]
    final: bool
    full: bool


@dataclass(frozen=True)
class NeedsFullPrune:
    """An incremental prune found no usable statistics for `plan`: a full prune must run instead."""

    plan: Plan


@dataclass(frozen=True)
class Probed:
    """Probe results on the pruned model (`plan` applied) and the dense reference results."""

    results: list[ProbeResult]
    dense: dict[str, ProbeResult]
    plan: Plan | None


@dataclass(frozen=True)
class Saved:
    """A session file was written."""

    path: Path


@dataclass(frozen=True)
class AutosaveFailed:
    """The recovery file could not be written (`error` says why)."""

    error: str


@dataclass(frozen=True)
class DropsChosen:
    """The blocks that `rule` (bi or angular) drops for N = `count`."""

    count: int
    rule: str
    blocks: list[int]
