"""Probes on the engine's model: the dense reference results and kl's dense top-k stores, kept once per
engine, and the probes' option values (`workbench.probes.Probe.options`) every run uses."""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, ContextManager

import torch

from workbench.engine.pruning import Cancel, Progress
from workbench.model.loader import Loaded
from workbench.probes import DenseTopK, ProbeContext, ProbeResult, option_values, run_probes
from workbench.probes.kl import TOP_K, dense_topk


class Prober:
    """Runs probes; `dense_weights()` puts the dense weights in for the reference runs."""

    def __init__(self, loaded: Loaded, calibration, dense_weights: Callable[[], ContextManager]):
        self.loaded, self.calibration, self.dense_weights = loaded, calibration, dense_weights
        self.dense: dict[str, ProbeResult] = {}
        self.topks: list[DenseTopK] = []  # the kl probe's dense reference, one per window set (quick, full)
        self.options: dict[str, dict] = {}  # probe name -> option values (defaults for the rest)

    def stale(self, name: str, size: str) -> bool:
        """Whether the dense result of `name` is missing, of another size or of other option values."""
        kept = self.dense.get(name)
        return (kept is None or kept.size != size
                or kept.details.get("options", {}) != option_values(name, self.options.get(name, {})))

    def dense_reference(self, names, size: str = "quick", cancel: Cancel | None = None) -> list[ProbeResult]:
        """The dense model's results for probes `names`, measured once (dense weights swapped in) and kept."""
        missing = [n for n in names if self.stale(n, size)]
        if missing:
            with self.dense_weights():
                for result in run_probes(self.context(cancel, dense_now=True), missing, size):
                    self.dense[result.name] = result
        return [self.dense[n] for n in names]

    def run(self, names, size: str, changed: bool, progress: Progress | None = None,
            cancel: Cancel | None = None) -> list[ProbeResult]:
        """Probes on the model as it runs now (`changed`: it differs from the dense model)."""
        dense = self.dense_reference(names, size, cancel)
        if not changed:
            return dense
        return run_probes(self.context(cancel), names, size, progress, dense=self.dense)

    def context(self, cancel: Cancel | None, dense_now: bool = False) -> ProbeContext:
        """The context probes run in; `dense_now` when the dense weights are already in (dense_reference)."""
        ctx = ProbeContext(self.loaded.model, self.loaded.tokenizer, self.loaded.device,
                           eval_source=self.calibration.text, seed=self.calibration.seed, cancel=cancel,
                           options=self.options)
        ctx.dense_topk = functools.partial(self.dense_topk, check_cancel=ctx.check_cancel, swap=not dense_now)
        return ctx

    def dense_topk(self, windows: torch.Tensor, check_cancel: Callable[[], None] | None = None,
                   swap: bool = True) -> DenseTopK:
        """The kl probe's dense reference: the dense model's top-k log-probabilities at `windows`, computed
        once per window set and kept on the CPU; `swap` puts the dense weights in for it."""
        for stored in self.topks:
            if stored.covers(windows, TOP_K):
                return stored
        with self.dense_weights() if swap else contextlib.nullcontext():
            stored = dense_topk(self.loaded.model, windows, self.loaded.device, TOP_K, check_cancel)
        self.topks.append(stored)
        return stored
