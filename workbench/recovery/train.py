"""The healing loop: AdamW on what the form trains, causal-LM loss on seeded windows of the data's
calibration part, a held-out loss on its evaluation part, checkpoints to resume from.

Step s trains on `batch` windows whose starts come from a generator seeded with (seed, s), so a run
resumed at step s sees the windows an uninterrupted run would. The held-out windows are the evaluation
part's first `heldout_windows` windows, disjoint from every training window.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.infra.memory import heap_reuse, release_freed_memory
from workbench.model.data import CALIBRATION, evaluation_windows, token_stream
from workbench.model.layout import LinearRef
from workbench.recovery import lora
from workbench.recovery.spec import HealSpec

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]


@dataclass
class Curve:
    """Training loss per step and held-out loss at the steps it was measured (step 0: before training)."""

    loss: list[float] = field(default_factory=list)
    heldout_steps: list[int] = field(default_factory=list)
    heldout: list[float] = field(default_factory=list)


@dataclass
class Healed:
    """A finished run: its spec, curve, time, what trained, and a SHA-256 of the trained tensors."""

    spec: HealSpec
    curve: Curve
    seconds: float
    tokens_per_second: float
    trained_params: int
    digest: str
    adapters: dict[str, lora.LoraFactors] | None = None  # the adapter form's, kept apart from the base
    trained: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # what trained, as trained (CPU)

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "curve": asdict(self.curve), "seconds": self.seconds,
                "tokens_per_second": self.tokens_per_second, "trained_params": self.trained_params,
                "digest": self.digest}


def step_windows(stream: torch.Tensor, spec: HealSpec, step: int) -> torch.Tensor:
    """The `batch x seqlen` training windows of step `step` (see the module docstring)."""
    rng = random.Random(f"{spec.seed}:{step}")
    starts = [rng.randrange(0, len(stream) - spec.seqlen) for _ in range(spec.batch)]
    return torch.stack([stream[s:s + spec.seqlen] for s in starts])


def digest_of(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over named tensors' bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """One healing run over `refs` of a model (see `heal`)."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, refs: list[LinearRef],
                 spec: HealSpec, data: str):
        """Checks the data and the rank; `keep` (each linear's keep mask, None: dense) is set before running."""
        self.model, self.device, self.refs, self.spec = model, device, refs, spec
        self.keep: dict[str, torch.Tensor | None] = {}
        stream = token_stream(tokenizer, data, CALIBRATION)
        if len(stream) <= spec.seqlen:
            raise WorkbenchError(f"data {data!r}", f"too short: {len(stream)} tokens in the calibration part, "
                                                   f"need more than heal.seqlen = {spec.seqlen} for one batch")
        self.stream = stream
        self.heldout = evaluation_windows(tokenizer, data, spec.seqlen, spec.heldout_windows)
        if spec.form != "sparse":
            for ref in refs:
                smallest = min(ref.module.weight.shape)
                if spec.rank > smallest:
                    raise WorkbenchError("heal.rank", f"{spec.rank} is larger than {ref.name} "
                                                      f"({ref.module.out_features} x {ref.module.in_features})")
        self.peft_model = None
        self._grad_masks = []
        self.masters: dict[str, torch.nn.Parameter] = {}  # sparse form on a low-precision model: float32 copies

    # ----- what trains ----------------------------------------------------------------------------
    def trainables(self) -> dict[str, torch.nn.Parameter]:
        """The parameters the optimizer holds, by name."""
        if self.spec.form == "sparse":
            return self.masters or {ref.name: ref.module.weight for ref in self.refs}
        return {n: p for n, p in self.model.named_parameters() if "lora_" in n}

    def attach(self) -> None:
        spec = self.spec
        if spec.form == "sparse":
            for ref in self.refs:
                weight = ref.module.weight
                weight.requires_grad_(True)
                mask = self.keep.get(ref.name)
                if mask is not None:
                    self._grad_masks.append(weight.register_hook(lambda grad, m=mask: grad * m))
                if weight.dtype != torch.float32:  # AdamW steps a float32 master copy; the weight follows it
                    self.masters[ref.name] = torch.nn.Parameter(weight.detach().float().clone())
        else:
            keep = self.keep if spec.form == "masked" else None
            self.peft_model = lora.attach(self.model, self.refs, spec.rank, spec.alpha, spec.seed, keep)
            for p in self.trainables().values():
                p.requires_grad_(True)

    def put_masks_back(self) -> None:
        """Sparse form: zero the pruned weights (and their master copies) again after a step; a weight takes
        its master copy's value, rounded to its dtype."""
        with torch.no_grad():
            for ref in self.refs:
                mask = self.keep.get(ref.name)
                master = self.masters.get(ref.name)
                if master is not None:
                    if mask is not None:
                        master.mul_(mask.to(master.dtype))
                    ref.module.weight.copy_(master)
                elif mask is not None:
                    ref.module.weight.mul_(mask)

    def grads_to_masters(self) -> None:
        """Sparse form with master copies: each weight's (masked) gradient, in float32, on its master copy."""
        for ref in self.refs:
            master = self.masters.get(ref.name)
            if master is not None:
                master.grad = ref.module.weight.grad.float()
                ref.module.weight.grad = None

    def detach(self, finished: bool) -> dict[str, lora.LoraFactors] | None:
        """Take the LoRA layers out: merged (masked form, finished), copied out (adapter form, finished) or
        dropped; the model's own modules are back either way. Every weight stops requiring gradients."""
        adapters = None
        if self.peft_model is not None:
            if finished and self.spec.form == "adapter":
                adapters = lora.factors(self.model, self.refs)
            with torch.no_grad():
                if finished and self.spec.form == "masked":
                    self.peft_model.merge_and_unload()
                else:
                    self.peft_model.unload()
            self.peft_model = None
        for handle in self._grad_masks:
            handle.remove()
        self.model.requires_grad_(False)
        return adapters

    # ----- the loop -------------------------------------------------------------------------------
    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)
        with torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.model(input_ids=ids, labels=ids, use_cache=False).loss

    @torch.no_grad()
    def heldout_loss(self) -> float:
        was_training = self.model.training
        self.model.eval()
        total = sum(self.loss(self.heldout[i:i + 1]).item() for i in range(len(self.heldout)))
        self.model.train(was_training)
        return total / len(self.heldout)

    def step(self, step: int, optimizer: torch.optim.Optimizer) -> float:
        """One optimizer step on step `step`'s windows (the sparse form's masks put back); its loss."""
        loss = self.loss(step_windows(self.stream, self.spec, step))
        loss.backward()
        self.grads_to_masters()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.spec.form == "sparse":
            self.put_masks_back()
        return loss.item()

    def run(self, progress: Progress | None, cancel: Cancel | None, checkpoint: Path | None,
            resume: Path | None) -> Healed:
        spec = self.spec
        self.attach()
        finished = False
        try:
            params = self.trainables()
            optimizer = torch.optim.AdamW(params.values(), lr=spec.lr, weight_decay=0.0)
            curve, first = Curve(), 0
            if resume is not None:
                first, curve = load_checkpoint(resume, spec, params, optimizer)
            else:
                curve.heldout_steps.append(0)
                curve.heldout.append(self.heldout_loss())
            if spec.checkpointing == "on":
                checkpointing(self.model, True)
            self.model.train()
            start, tokens = time.perf_counter(), 0
            with heap_reuse():  # each step's tensors reuse the last step's heap blocks, not fresh mappings
                for step in range(first, spec.steps):
                    if cancel is not None and cancel():
                        if checkpoint is not None:
                            save_checkpoint(checkpoint, spec, step, curve, params, optimizer)
                        raise Cancelled()
                    curve.loss.append(self.step(step, optimizer))
                    if spec.checkpointing == "on":  # free blocks pile up from step to step (see infra.memory)
                        release_freed_memory()
                    tokens += spec.batch * spec.seqlen
                    done = step + 1
                    if done % spec.heldout_every == 0 or done == spec.steps:
                        curve.heldout_steps.append(done)
                        curve.heldout.append(self.heldout_loss())
                        if checkpoint is not None:
                            save_checkpoint(checkpoint, spec, done, curve, params, optimizer)
                    if progress:
                        elapsed = time.perf_counter() - start
                        rate = tokens / elapsed if elapsed else 0.0
                        left = (spec.steps - done) * spec.batch * spec.seqlen / rate if rate else 0.0
                        progress(f"healing: step {done}/{spec.steps}, loss {curve.loss[-1]:.3f}, held-out "
                                 f"{curve.heldout[-1]:.3f}, {rate:.0f} tokens/s, {left:.0f} s left", done / spec.steps)
            seconds = time.perf_counter() - start
            trained = snapshot(params)
            finished = True
        finally:
            if spec.checkpointing == "on":
                checkpointing(self.model, False)
            self.model.eval()
            adapters = self.detach(finished)
        return Healed(spec, curve, seconds, tokens / seconds if seconds else 0.0,
                      sum(t.numel() for t in trained.values()), digest_of(trained), adapters, trained)

    def restore(self, tensors: dict[str, torch.Tensor], curve: Curve, where: str) -> Healed:
        """Put a saved run's trained tensors in (no training): the same healed model, exactly."""
        self.attach()
        finished = False
        try:
            params = self.trainables()
            if set(params) != set(tensors):
                raise WorkbenchError(where, "holds other tensors than this plan's healing trains (another plan or targets)")
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(tensors[name].to(p.device, p.dtype))
            if self.masters:
                self.put_masks_back()
            trained = snapshot(params)
            finished = True
        finally:
            adapters = self.detach(finished)
        return Healed(self.spec, curve, 0.0, 0.0, sum(t.numel() for t in trained.values()), digest_of(trained),
                      adapters, trained)


def checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Gradient (activation) checkpointing on or off, by transformers' current name or its older one."""
    if on:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


def snapshot(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies of the trained tensors, by name."""
    return {n: p.detach().to("cpu", copy=True) for n, p in params.items()}


def save_checkpoint(path: Path, spec: HealSpec, step: int, curve: Curve, params: dict, optimizer) -> None:
    """The run at `step` (trained tensors, optimizer state, curve), written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"spec": spec.to_dict(), "step": step, "curve": asdict(curve),
                "params": {n: p.detach().cpu() for n, p in params.items()}, "optimizer": optimizer.state_dict()}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, spec: HealSpec, params: dict, optimizer) -> tuple[int, Curve]:
    """Put a saved run's tensors and optimizer state back; its step and curve. Refused in one line when the
    file is missing, damaged, or from another spec or other linears."""
    where = f"--resume {path}"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WorkbenchError(where, "file not found") from None
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise WorkbenchError(where, f"cannot read: {str(exc).splitlines()[0]}") from None
    if saved.get("spec") != spec.to_dict():
        raise WorkbenchError(where, "saved by another healing spec (form, steps, rank, data... must match)")
    if set(saved["params"]) != set(params):
        raise WorkbenchError(where, "saved for other linears (another plan or targets)")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved["params"][name].to(p.device))
    optimizer.load_state_dict(saved["optimizer"])
    return saved["step"], Curve(**saved["curve"])
