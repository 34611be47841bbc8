"""The agent loop (arXiv 2601.09694): observe, act, measure, accept or roll back.

Start: every block uniform at `target - span` (default 10 points below the target), pruned in full once;
its calibration statistics are then cached, and every later step re-prunes from them in milliseconds.
Starting below the target keeps the first steps where pruning is cheap and leaves the last `span` of
sparsity, where blocks differ most, to the agent; the run is a pure function of the start plan and the
recorded decisions, so it replays exactly.

Each step: the policy sees the observation (`workbench.agent.observation`) and the history of past steps;
it names blocks to raise, each by at most `step` (2.5 points, the issue's bound); the loop caps each
target at MAX_SPARSITY and scales the last step down so the global (parameter-weighted) target lands
exactly on the goal. It applies the raise and measures the quick probe named by `measure`: `kl`, the
mean token KL(dense || pruned) (default: it ranks blocks more stably across calibration seeds, see
`workbench.domain.signals`), or perplexity. When perplexity rises more than `rollback` (10%)
over the checkpoint in that step (for KL: when exp of its rise in nats does, the same bound on the mean
log-loss), or the value is not finite, the step is rolled back to the checkpoint; otherwise it is
accepted and becomes the checkpoint. The paper publishes no threshold: 10% sits
above a typical step on the embedded model (Wanda, 60% target: a quarter of the blocks up 2.5 points
moved perplexity +2% to +8% between 50% and 57%; the steps rolled back rose +11% to +13%), so a rollback
marks a step clearly worse than its neighbours.

Stop: the global target reached; `max_steps` steps (40, the top of the paper's 21-40 iterations);
`patience` (4) steps in a row without an accepted one; the policy has nothing left to propose; or
`stop()`. The final plan is the `agent` allocator with the accepted steps (`final_plan`), which
rebalances to the target when the run stopped short.
"""

from __future__ import annotations

import dataclasses
import math
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

from workbench.agent.observation import observe_blocks
from workbench.agent.policies import Policy
from workbench.agent.policies.llm import LLMSettings
from workbench.agent.record import (ACCEPTED, DEFAULTS, NO_ACTION, ROLLED_BACK, AgentLog, Observation, StepRecord,
                                    change)
from workbench.allocators import DEFAULT_M
from workbench.domain.plan import MAX_SPARSITY, Plan, weighted_mean
from workbench.domain.signals import SIGNALS
from workbench.engine.facade import Engine
from workbench.infra.errors import WorkbenchError

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]

REACHED = 1e-9  # the global target counts as reached within this
SCAN_STEP = 0.1  # raise per block of the optional sensitivity scan (as `workbench sensitivity`)


@dataclass
class AgentSettings:
    """How the loop runs (see the module docstring for the defaults' reasons)."""

    step: float = DEFAULTS["step"]
    span: float = DEFAULTS["span"]
    max_steps: int = DEFAULTS["max_steps"]
    rollback: float = DEFAULTS["rollback"]
    measure: str = DEFAULTS["measure"]  # the quick probe each step measures: perplexity or kl
    patience: int = 4
    gradient_samples: int = 8  # calibration windows for the mean |gradient|
    gradient_scope: str = "all"  # all seven linears (the paper's LM-loss gradient), or attention
    scan: bool = False  # run a sensitivity scan at the start point and show it to the policy
    llm: LLMSettings = field(default_factory=LLMSettings)

    @classmethod
    def from_params(cls, params: dict) -> "AgentSettings":
        """The settings recorded in the agent allocator's params (the rest default)."""
        return cls(step=params["step"], span=params["span"], max_steps=int(params["max_steps"]), rollback=params["rollback"],
                   measure=params["measure"])

    def params(self) -> dict:
        """The settings the agent allocator's params record."""
        return {"step": self.step, "span": self.span, "max_steps": self.max_steps, "rollback": self.rollback,
                "measure": self.measure}

    def check(self) -> None:
        """Refuse settings out of range (a WorkbenchError naming the setting)."""
        for name in ("step", "span", "rollback"):
            if not 0 < getattr(self, name) < 1:
                raise WorkbenchError(name, f"must be in (0, 1), got {getattr(self, name)}")
        for name in ("max_steps", "patience", "gradient_samples"):
            if getattr(self, name) < 1:
                raise WorkbenchError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.measure not in SIGNALS:
            raise WorkbenchError("measure", f"unknown measure {self.measure!r} (known: {', '.join(SIGNALS)})")
        if self.llm.timeout <= 0 or self.llm.retries < 0:
            raise WorkbenchError("llm", "timeout must be > 0 and retries >= 0")


class AgentRun:
    """One agent run on an engine, step by step; the run owns the engine while it runs.

    `plan` gives the method, its params and the global target (its allocator and overrides are not
    used). `sensitivity`: per-block deltas of a sensitivity scan to show the policy (or `settings.scan`).
    """

    def __init__(self, engine: Engine, plan: Plan, policy: Policy, settings: AgentSettings | None = None,
                 sensitivity: list[float | None] | None = None):
        self.settings = settings or AgentSettings()
        self.settings.check()
        if plan.pattern:
            raise WorkbenchError("agent", f"per-block targets do not apply with pattern {plan.pattern}")
        if plan.structure.drop_blocks:  # a dropped block has no statistics to observe
            raise WorkbenchError("agent", "runs on plans that drop no blocks (narrowed widths are fine)")
        self.engine = engine
        self.plan = plan
        self.policy = policy
        self.sensitivity = sensitivity
        self.start = max(0.0, plan.sparsity - self.settings.span)
        self.numels = engine.block_numels()
        self.targets = [self.start] * len(self.numels)  # the checkpoint's block targets
        self.steps: list[dict] = []  # the accepted decisions, as the agent allocator records them
        self.records: list[StepRecord] = []
        self.stop_reason: str | None = None
        self.start_score = self.dense_score = self.checkpoint_score = math.nan  # values of settings.measure
        self.final_score: float | None = None
        self.gradients: list[float] = []
        self.outliers: list[float] = []
        self._started = False
        self._stop_asked = False
        self._policy_stop: str | None = None
        self._seconds = 0.0

    # ----- plans ----------------------------------------------------------------------------------
    def start_plan(self) -> Plan:
        """Every block uniform at the start point (the run's one full prune)."""
        return Plan(method=self.plan.method, method_params=dict(self.plan.method_params), sparsity=self.start)

    def checkpoint_plan(self) -> Plan:
        """The last accepted state, as block overrides on the start plan."""
        return self._plan(self.targets)

    def _plan(self, targets: list[float]) -> Plan:
        return dataclasses.replace(self.start_plan(), block_overrides=dict(enumerate(targets)))

    def allocator_params(self) -> dict:
        """The agent allocator's params that replay this run: policy, settings, start, accepted steps."""
        return {"policy": self.policy.name, **self.settings.params(), "start": self.start,
                "steps": [{"blocks": list(s["blocks"]), "by": list(s["by"])} for s in self.steps]}

    def final_plan(self) -> Plan:
        """The plan to keep: the agent allocator replaying the accepted steps, at the global target."""
        return Plan(method=self.plan.method, method_params=dict(self.plan.method_params), allocator="agent",
                    allocator_params=self.allocator_params(), sparsity=self.plan.sparsity)

    def sparsity(self) -> float:
        """The checkpoint's global (parameter-weighted) target."""
        return weighted_mean(self.targets, self.numels)

    # ----- running --------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Whether the run has stopped (`stop_reason` says why)."""
        return self.stop_reason is not None

    def stop(self) -> None:
        """Ask the run to stop before its next step (safe from another thread)."""
        self._stop_asked = True

    def step(self, progress: Progress | None = None, cancel: Cancel | None = None) -> StepRecord | None:
        """Run one step and return its record; None once the run has stopped (the engine then holds the
        final plan). The first call prunes the start point and measures what the observation needs. On
        an exception (Ctrl-C, cancel) the engine goes back to the checkpoint first."""
        if self.done:
            return None
        began = time.perf_counter()
        if not self._started:
            self._begin(progress, cancel)
        reason = self._stopping()
        if reason is not None:
            self.stop_reason = reason
            self._finish(cancel)
            self._seconds += time.perf_counter() - began
            return None
        observation = self.observation()
        action = self.policy.propose(observation, list(self.records))
        raises = self._bounded(action.raises)
        record = StepRecord(index=len(self.records) + 1, outcome=NO_ACTION, blocks=sorted(raises),
                            by=[raises[b] for b in sorted(raises)], sparsity=self.sparsity(), reason=action.reason,
                            observation=summary(observation), prompt=action.prompt, replies=list(action.replies),
                            errors=list(action.errors))
        if raises:
            self._try(raises, record, cancel)
        elif action.stop:
            self._policy_stop = action.reason
        record.seconds = time.perf_counter() - began
        self._seconds += record.seconds
        self.records.append(record)
        if progress:
            progress(f"agent {record.line(self.settings.measure)}", self._progress())
        return record

    def run(self, progress: Progress | None = None, cancel: Cancel | None = None,
            on_step: Callable[[StepRecord], None] | None = None) -> AgentLog:
        """Step until the run stops; `on_step` sees every record. Returns the log."""
        while (record := self.step(progress, cancel)) is not None:
            if on_step is not None:
                on_step(record)
        return self.log()

    def observation(self) -> Observation:
        """What the policy sees now."""
        s = self.settings
        blocks = observe_blocks(self.engine, self.targets, self.gradients, self.outliers, self.sensitivity)
        return Observation(blocks=blocks, sparsity=self.sparsity(), target=self.plan.sparsity, step=s.step,
                           rollback=s.rollback, checkpoint_score=self.checkpoint_score, dense_score=self.dense_score,
                           steps_left=s.max_steps - len(self.records), measure=s.measure)

    def log(self) -> AgentLog:
        """The run so far, for the session (the LLM key is never in it)."""
        llm = self.settings.llm
        llm_used = self.policy.name == "llm"
        return AgentLog(
            policy=self.policy.name, settings={**self.settings.params(), "patience": self.settings.patience,
                                               "gradient_samples": self.settings.gradient_samples,
                                               "gradient_scope": self.settings.gradient_scope, "scan": self.settings.scan},
            target=self.plan.sparsity, start=self.start, start_score=self.start_score, dense_score=self.dense_score,
            records=list(self.records), stop_reason=self.stop_reason or "", final_score=self.final_score, measure=self.settings.measure,
            seconds=self._seconds, agent_model=llm.model if llm_used else "",
            agent_url=public_url(llm.url) if llm_used else "", system_prompt=getattr(self.policy, "system_prompt", ""),
        )

    # ----- inside -----------------------------------------------------------------------------------
    def _begin(self, progress: Progress | None, cancel: Cancel | None) -> None:
        from workbench.engine.gradients import mean_abs_gradients
        from workbench.studies.sensitivity import scan

        engine, s = self.engine, self.settings
        engine.prune(self.start_plan(), progress, cancel)
        self.dense_score = engine.dense_reference([s.measure], cancel=cancel)[0].score
        self.start_score = self.checkpoint_score = self._measure(cancel)
        ids = engine.calibration_ids()[: s.gradient_samples]
        self.gradients = mean_abs_gradients(engine.loaded.model, ids, engine.loaded.device, s.gradient_scope, progress, cancel)
        self.outliers = engine.outlier_ratios(DEFAULT_M)[0]
        if s.scan and self.sensitivity is None:
            self.sensitivity = scan(engine, self.start_plan(), SCAN_STEP, s.measure, progress=progress, cancel=cancel).deltas
        self._started = True

    def _stopping(self) -> str | None:
        s = self.settings
        if self._stop_asked:
            return "stopped"
        if self.sparsity() >= self.plan.sparsity - REACHED:
            return "target reached"
        if self._policy_stop is not None:
            return f"the policy stopped: {self._policy_stop}"
        if len(self.records) >= s.max_steps:
            return f"{s.max_steps} steps (max steps)"
        tail = self.records[-s.patience:]
        if len(tail) == s.patience and all(r.outcome != ACCEPTED for r in tail):
            return f"no accepted step in the last {s.patience}"
        return None

    def _bounded(self, raises: dict[int, float]) -> dict[int, float]:
        """Each raise within (0, step] and under the cap; the whole scaled down so the global target does
        not pass the goal."""
        bounded = {}
        for block, by in sorted(raises.items()):
            if 0 <= block < len(self.targets):
                by = min(by, self.settings.step, MAX_SPARSITY - self.targets[block])
                if by > 0:
                    bounded[block] = by
        gap = self.plan.sparsity - self.sparsity()
        rise = sum(by * self.numels[b] for b, by in bounded.items()) / sum(self.numels)
        if rise > gap + REACHED and gap > 0:
            bounded = {b: by * gap / rise for b, by in bounded.items()}
        return bounded

    def _try(self, raises: dict[int, float], record: StepRecord, cancel: Cancel | None) -> None:
        """Apply the raises, measure, then accept (a new checkpoint) or roll back."""
        trial = list(self.targets)
        for block, by in raises.items():
            trial[block] = min(trial[block] + by, MAX_SPARSITY)  # as `targets_after` replays it
        try:
            self.engine.apply(self._plan(trial), cancel=cancel)
            score = self._measure(cancel)
        except BaseException:
            self.engine.apply(self.checkpoint_plan())
            raise
        record.score, record.change = score, change(self.settings.measure, score, self.checkpoint_score)
        if not math.isfinite(score) or record.change > self.settings.rollback:
            self.engine.apply(self.checkpoint_plan())
            record.outcome = ROLLED_BACK
        else:
            self.targets, self.checkpoint_score = trial, score
            self.steps.append({"blocks": record.blocks, "by": record.by})
            record.outcome, record.sparsity = ACCEPTED, self.sparsity()

    def _finish(self, cancel: Cancel | None) -> None:
        """Put the final plan on the engine and measure it (the checkpoint's value when it is the same)."""
        self.engine.apply(self.final_plan(), cancel=cancel)
        reached = self.sparsity() >= self.plan.sparsity - REACHED
        self.final_score = self.checkpoint_score if reached else self._measure(cancel)

    def _measure(self, cancel: Cancel | None) -> float:
        return self.engine.probe([self.settings.measure], "quick", cancel=cancel)[0].score

    def _progress(self) -> float:
        span = self.plan.sparsity - self.start
        return min(1.0, (self.sparsity() - self.start) / span) if span > 0 else 1.0


def summary(observation: Observation) -> dict:
    """The observation as per-block lists, rounded, for the step log."""
    blocks = observation.blocks
    data = {"sparsity": [round(b.sparsity, 6) for b in blocks], "wanda_z": [round(b.wanda_z, 4) for b in blocks],
            "gradient_z": [round(b.gradient_z, 4) for b in blocks], "outlier_ratio": [round(b.outlier_ratio, 6) for b in blocks]}
    if all(b.sensitivity is not None for b in blocks):
        data["sensitivity"] = [round(b.sensitivity, 6) for b in blocks]
    return data


def public_url(url: str) -> str:
    """`url` without credentials or query, for the record."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return urllib.parse.urlunsplit((parts.scheme, f"{host}:{parts.port}" if parts.port else host, parts.path, "", ""))
