"""The agent's plain data (no torch): what a policy sees (`Observation`), what it answers (`Action`), what
the loop records for every step (`StepRecord`) and for the whole run (`AgentLog`, the session's [agent]
table); and the z-score across blocks that observations and policies use."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from workbench.domain.signals import DEFAULT_SIGNAL, SIGNALS
from workbench.infra.params import Param, defaults

ACCEPTED = "accepted"
ROLLED_BACK = "rolled back"
NO_ACTION = "no action"
OUTCOMES = (ACCEPTED, ROLLED_BACK, NO_ACTION)
EPS = 1e-8
LABELS = {"perplexity": "ppl", "kl": "KL"}
# The agent allocator's parameters: the loop's settings and the recorded decisions (the policy's name is
# checked against the policy registry by the allocator).
PARAMS = (
    Param("policy", "builtin", "who decides: builtin (offline, greedy) or llm (an OpenAI-compatible endpoint)"),
    Param("step", 0.025, "largest raise of one block's target in one step", low=0, high=1, open_low=True, open_high=True),
    Param("span", 0.1, "the loop starts uniform at the target minus span", low=0, high=1, open_low=True, open_high=True),
    Param("max_steps", 40, "the loop stops after this many steps", low=1, whole=True),
    Param("rollback", 0.1, "a step is rolled back when perplexity rises more than this share over the checkpoint "
                           "(kl: exp of its rise)", low=0, high=1, open_low=True, open_high=True),
    Param("measure", DEFAULT_SIGNAL, "what each step measures: kl (mean token KL against the dense model), or perplexity",
          choices=SIGNALS),
    Param("start", None, "recorded: every block's target before the first step", recorded=True),
    Param("steps", (), "recorded: the accepted steps (blocks raised, by how much)", recorded=True),
)
DEFAULTS = defaults(PARAMS)
# Field names of sessions written before the measure could be KL (read as the new names).
LEGACY_NAMES = {"ppl": "score", "start_ppl": "start_score", "dense_ppl": "dense_score", "final_ppl": "final_score"}


def change(measure: str, value: float, reference: float) -> float:
    """A measured value's rise over `reference` as a share: the ratio minus 1 for perplexity; for KL (nats)
    exp(rise) - 1, the perplexity ratio that the same rise of mean log-loss gives, so one rollback bound
    serves both."""
    return math.exp(value - reference) - 1 if measure == "kl" else value / reference - 1


def legacy_renamed(data: dict) -> dict:
    """`data` with the field names of older sessions renamed (see LEGACY_NAMES)."""
    return {LEGACY_NAMES.get(key, key): value for key, value in data.items()}


def zscores(values: list[float]) -> list[float]:
    """(x - mean) / (std + eps) across blocks (population std, as the paper's formula)."""
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return [(v - mean) / (std + EPS) for v in values]


@dataclass
class BlockObservation:
    """One block as the policy sees it. `wanda_z`: z-score across blocks of the 10th percentile of the
    non-zero Wanda scores |W| * ||X||_2 of the current weights (high: even the weakest weights left
    matter); `gradient_z`: z-score of the mean |gradient| of the LM loss; `sensitivity`: the probe's
    change when only this block was pruned more, from a sensitivity scan (None: not scanned)."""

    index: int
    numel: int
    sparsity: float
    wanda_q10: float
    wanda_z: float
    gradient: float
    gradient_z: float
    outlier_ratio: float
    sensitivity: float | None = None


@dataclass
class Observation:
    """The state before a step: every block, the global (parameter-weighted) target now and the goal,
    the largest raise of one block in one step, the measured values (`measure`) and what is left."""

    blocks: list[BlockObservation]
    sparsity: float
    target: float
    step: float
    rollback: float
    checkpoint_score: float
    dense_score: float
    steps_left: int
    measure: str = "perplexity"


@dataclass
class Action:
    """A policy's answer: raise block b's target by `raises[b]`. Empty `raises`: no action, and with
    `stop` the policy has nothing more to do. LLM policies also give their prompt, replies and errors."""

    raises: dict[int, float]
    reason: str = ""
    stop: bool = False
    prompt: str = ""
    replies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class StepRecord:
    """One step of the loop: the bounded action taken (`blocks` raised `by`), the measured value (`score`,
    of the run's measure) and its change over the checkpoint (see `change`), the outcome (accepted, rolled back, no action), the global target
    after the step (after a rollback: the checkpoint's) and a summary of the observation."""

    index: int
    outcome: str
    blocks: list[int]
    by: list[float]
    sparsity: float
    reason: str = ""
    score: float | None = None
    change: float | None = None
    seconds: float = 0.0
    observation: dict = field(default_factory=dict)
    prompt: str = ""
    replies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """TOML-ready data (TOML has no null: unmeasured values are left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "StepRecord":
        """The inverse of `to_dict` (checked by the session reader)."""
        data = legacy_renamed(data)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def line(self, measure: str) -> str:
        """One line: "step 3: +2.5 on 4,7 -> ppl 31.2 (+3.1%) accepted, global 53.1%" ("KL 0.412" for kl)."""
        if not self.blocks:
            return f"step {self.index}: no action ({self.reason})"
        amounts = sorted({round(100 * b, 2) for b in self.by})
        raised = f"+{'/'.join(f'{a:g}' for a in amounts)} on {','.join(map(str, self.blocks))}"
        return (f"step {self.index}: {raised} -> {LABELS[measure]} {self.score:.4g} ({self.change:+.1%}) {self.outcome}, "
                f"global {self.sparsity:.1%}")


@dataclass
class AgentLog:
    """A whole run, for the session: policy and endpoint (never a key), settings, the measure and its
    values (dense, start, final), every step, and the system prompt of an LLM policy."""

    policy: str
    settings: dict
    target: float
    start: float
    start_score: float
    dense_score: float
    records: list[StepRecord] = field(default_factory=list)
    stop_reason: str = ""
    final_score: float | None = None
    measure: str = "perplexity"
    seconds: float = 0.0
    agent_model: str = ""
    agent_url: str = ""
    system_prompt: str = ""

    def accepted(self) -> int:
        """How many steps were accepted."""
        return sum(r.outcome == ACCEPTED for r in self.records)

    def rollbacks(self) -> int:
        """How many steps were rolled back."""
        return sum(r.outcome == ROLLED_BACK for r in self.records)

    def to_dict(self) -> dict:
        """TOML-ready data."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        data["records"] = [r.to_dict() for r in self.records]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "AgentLog":
        """The inverse of `to_dict` (checked by the session reader)."""
        data = legacy_renamed(data)
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["records"] = [StepRecord.from_dict(r) for r in data.get("records", [])]
        return cls(**values)
