"""Quick probes of what pruning breaks. Each probe is one module in this package that registers a
`Probe` subclass with `@PROBES.register(name)`; `run_probes` runs a list of them on a model.

A probe is deterministic (fixed items or seeded generators, greedy decoding) and returns a
`ProbeResult` with its score, item count, wall time, the tolerance `workbench replay --check` uses and
the units its score is recomputed from (per item, or per chunk of `CHUNK` tokens). Given the dense
model's result, an exact-match probe also reports its flips (items right to wrong, wrong to right).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Callable, ClassVar

import torch

from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.infra.params import Param, complete
from workbench.infra.registry import Registry


SIZES = ("quick", "full")
# Items of an exact-match probe that may flip between machines on a replay with recomputed masks: up to
# 2 flipped in the measurements (README, Reliability), one more for margin.
EXACT_MATCH_FLIPS = 3


LINKS = ("mean", "exp")
CHUNK = 32  # predicted tokens per unit of the token-level probes (perplexity, kl)


@dataclass
class Units:
    """What a score is recomputed from, one entry per item (exact-match probes: 1.0 right, 0.0 wrong) or
    per chunk of tokens (perplexity, kl: summed per-token values, with the chunk's token count as its
    weight): the score is `link(sum(values) / sum(weights))` (weights 1 when None; link `mean` is the
    identity, `exp` gives perplexity from NLL). A paired bootstrap resamples the same unit indices of
    two results of one probe (same items, same order)."""

    values: list[float]
    weights: list[float] | None = None
    link: str = "mean"

    def score(self, index=None) -> float:
        """The statistic over all units, or over the units at `index` (a resample)."""
        values = self.values if index is None else [self.values[i] for i in index]
        weights = (self.weights if index is None else [self.weights[i] for i in index]) if self.weights else None
        mean = sum(values) / (sum(weights) if weights else len(values))
        return math.exp(mean) if self.link == "exp" else mean

    def to_dict(self) -> dict:
        data = {"values": list(self.values), "link": self.link}
        if self.weights is not None:
            data["weights"] = list(self.weights)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Units":
        return cls([float(v) for v in data["values"]],
                   [float(w) for w in data["weights"]] if data.get("weights") is not None else None,
                   data.get("link", "mean"))


def right_or_wrong(items: list[bool]) -> dict[str, Units]:
    """The units of an exact-match probe: 1.0 for each item right, 0.0 for each wrong, in item order."""
    return {"score": Units([1.0 if ok else 0.0 for ok in items])}


def chunk_units(per_token: torch.Tensor, link: str = "mean") -> Units:
    """Units of per-token values (windows x predicted tokens): the sum over each run of `CHUNK`
    consecutive tokens of a window (a window's last run may be shorter), weighted by its token count."""
    parts = [part for row in per_token.double() for part in row.split(CHUNK)]
    return Units([part.sum().item() for part in parts], [float(len(part)) for part in parts], link)


@dataclass
class ProbeResult:
    """One probe's outcome; `floor` is the score of random choice (or zero). `tolerance` is how far a
    replay may land from this score (see `workbench.domain.replaycheck`): absolute, or a fraction of the score
    when `relative` (perplexity)."""

    name: str
    score: float
    metric: str
    higher_is_better: bool
    items: int
    seconds: float
    size: str
    tolerance: float
    floor: float
    details: dict = field(default_factory=dict)
    relative: bool = False
    units: dict[str, Units] = field(default_factory=dict)  # "score" recomputes `score`; others name a detail

    def to_dict(self) -> dict:
        data = asdict(self)
        data["units"] = {name: u.to_dict() for name, u in self.units.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ProbeResult":
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["units"] = {name: Units.from_dict(u) for name, u in (data.get("units") or {}).items()}
        return cls(**fields)

    def allowance(self) -> float:
        """The tolerance in score units."""
        return self.tolerance * abs(self.score) if self.relative else self.tolerance

    def differs(self, other: "ProbeResult") -> bool:
        """True when `other` is further from this result than the tolerance allows."""
        return abs(self.score - other.score) > self.allowance()


def flips(before: ProbeResult | None, after: ProbeResult | None) -> dict[str, int] | None:
    """Items right in `before` and wrong in `after` ("lost"), and wrong then right ("gained"), from the
    per-item units (1 right, 0 wrong) of two results of one exact-match probe and size; None when the
    two results hold no such units for the same items."""
    if before is None or after is None:
        return None
    a, b = before.units.get("score"), after.units.get("score")
    if (a is None or b is None or a.weights is not None or b.weights is not None or len(a.values) != len(b.values)
            or (before.name, before.size) != (after.name, after.size)):
        return None
    return {"lost": sum(x > y for x, y in zip(a.values, b.values)),
            "gained": sum(x < y for x, y in zip(a.values, b.values))}


@dataclass
class DenseTopK:
    """The dense model's next-token distribution at every predicted token of `windows`, kept small."""

    windows: torch.Tensor  # (windows, seqlen) the tokens it was computed on
    logprobs: torch.Tensor  # (windows, seqlen - 1, k) float32, descending: the top-k log-probabilities
    ids: torch.Tensor  # (windows, seqlen - 1, k) int32: their token ids
    tail: torch.Tensor  # (windows, seqlen - 1) float32: log of the mass outside the top k (-inf: none)

    @property
    def k(self) -> int:
        return self.logprobs.shape[-1]

    def covers(self, windows: torch.Tensor, k: int) -> bool:
        """Whether this store holds top-`k` entries for exactly these windows."""
        return self.k == k and self.windows.shape == windows.shape and torch.equal(self.windows, windows)


@dataclass
class ProbeContext:
    """What a probe runs against. `cancel` is polled between batches. `dense_topk(windows)` gives the
    dense model's top-k next-token log-probabilities at token windows (`workbench.probes.kl`), computed
    once by the engine; None means `model` is its own reference (a bare model: KL 0)."""

    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    eval_source: str = "embedded"
    seed: int = 0
    cancel: Callable[[], bool] | None = None
    dense_topk: Callable[[torch.Tensor], DenseTopK] | None = None
    planned: tuple[str, ...] = ()  # the probes of this run (probes that share a forward pass read it)
    shared: dict = field(default_factory=dict)  # what one probe computed for another of this run
    options: dict[str, dict] = field(default_factory=dict)  # probe name -> its declared options' values

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled()


class Probe(ABC):
    """Base class: subclasses set the class attributes and implement `measure`."""

    name: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    tolerance: ClassVar[float] = 0.0
    relative: ClassVar[bool] = False
    tolerance_items: ClassVar[int] = 0
    floor: ClassVar[float] = 0.0
    options: ClassVar[tuple[Param, ...]] = ()  # declared once: CLI flags, checks and the recorded values
    opt_in: ClassVar[bool] = False  # too slow for the app's default probe runs: the user adds it

    def settings(self, ctx: ProbeContext) -> dict:
        """This probe's option values in `ctx`, completed with the defaults and checked."""
        return option_values(self.name, ctx.options.get(self.name, {}))

    @classmethod
    def check_options(cls, values: dict) -> None:
        """Checks of option values beyond their declared ranges (one-line errors naming the option)."""

    @abstractmethod
    def measure(self, ctx: ProbeContext, size: str) -> tuple[float, int, dict, dict[str, Units]]:
        """Return (score, number of items, details, units); units["score"] recomputes the score."""

    def replay_tolerance(self, score: float, items: int, dense: ProbeResult | None) -> float:
        """How far a replay on another machine may land from `score` (see `workbench.domain.replaycheck`):
        `tolerance_items` of `items` for a probe that counts items, else `tolerance`; `dense` is the
        dense model's result when known."""
        return self.tolerance_items / items if self.tolerance_items and items else self.tolerance

    def run(self, ctx: ProbeContext, size: str = "quick", dense: ProbeResult | None = None) -> ProbeResult:
        """Measure under no_grad and wrap the outcome with its timing, replay tolerance and units; with
        the dense model's result of an exact-match probe, details["flips"] counts the items that changed."""
        if size not in SIZES:
            raise WorkbenchError("probe size", f"unknown size {size!r} (use quick or full)")
        start = time.perf_counter()
        with torch.no_grad():
            score, items, details, units = self.measure(ctx, size)
        result = ProbeResult(
            name=self.name,
            score=float(score),
            metric=self.metric,
            higher_is_better=self.higher_is_better,
            items=int(items),
            seconds=time.perf_counter() - start,
            size=size,
            tolerance=self.replay_tolerance(float(score), int(items), dense),
            floor=self.floor,
            details=details,
            relative=self.relative,
            units=units,
        )
        if self.options:
            result.details["options"] = self.settings(ctx)
        changed = flips(dense, result) if dense is not None else None
        if changed is not None:
            result.details["flips"] = changed
        return result


PROBES: Registry[type[Probe]] = Registry("probe", __name__)


def default_probes() -> list[str]:
    """The probes the app runs unless the user adds the opt-in ones."""
    return [name for name in PROBES.names() if not PROBES.get(name).opt_in]


def opt_in_probes() -> list[str]:
    """The probes the user adds to the app's runs (slower ones, such as reasoning)."""
    return [name for name in PROBES.names() if PROBES.get(name).opt_in]
WEIGHT_FREE = ("efficiency",)  # probes that mean something on random weights
_timing_only = contextvars.ContextVar("timing_only", default=False)


def option_values(name: str, given: dict) -> dict:
    """The option values of probe `name` (declared in its `options`; {} for a probe without any): `given`
    completed with the defaults and checked, one-line errors naming `NAME.OPTION`."""
    probe = PROBES.get(name, where="--probes")
    if not probe.options:
        return {}
    values = complete("probe", name, probe.options, given, name)
    probe.check_options(values)
    return values


def recorded_options(results: list[ProbeResult]) -> dict[str, dict]:
    """The option values recorded in probe results (details["options"]), by probe name: what a replay
    runs them with."""
    return {r.name: dict(r.details["options"]) for r in results if r.details.get("options")}


@contextlib.contextmanager
def timing_only():
    """Let every probe run on random weights: `workbench bench` times them (their scores mean nothing)."""
    token = _timing_only.set(True)
    try:
        yield
    finally:
        _timing_only.reset(token)


def refuse_random_weights(model: torch.nn.Module, names) -> None:
    """One-line error when probes of quality are asked of a model with random weights (`workbench.model.shapes`)."""
    from workbench.model.shapes import random_weights_of

    random = random_weights_of(model)
    quality = [n for n in names if n not in WEIGHT_FREE]
    if random and quality and not _timing_only.get():
        raise WorkbenchError("--probes", f"{', '.join(quality)} on {random}: random weights, so quality scores mean "
                                         f"nothing; only {', '.join(WEIGHT_FREE)} runs on a random model")


def run_probes(
    ctx: ProbeContext,
    names: list[str] | tuple[str, ...],
    size: str = "quick",
    progress: Callable[[str, float], None] | None = None,
    dense: dict[str, ProbeResult] | None = None,
) -> list[ProbeResult]:
    """Run the named probes in order; `progress(name, fraction_done)` before each; `dense` holds the
    dense model's results, which some replay tolerances scale with. Quality probes refuse random weights."""
    probes = [PROBES.get(n, where="--probes")() for n in names]
    refuse_random_weights(ctx.model, names)
    ctx.planned = tuple(names)
    results = []
    for i, probe in enumerate(probes):
        ctx.check_cancel()
        if progress:
            progress(probe.name, i / len(probes))
        results.append(probe.run(ctx, size, (dense or {}).get(probe.name)))
    if progress:
        progress("done", 1.0)
    return results
