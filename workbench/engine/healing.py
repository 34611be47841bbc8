"""Healing on the engine's pruned model: which linears train, their keep masks, the weights before (to
undo it exactly), and the overlay a finished run leaves (merged weights, or the adapter's hooks).

The bank's rule (every linear is its method's prune of its dense weight) holds for the pruned model
under the healing; any edit, prune, restore or mask restore undoes the healing first.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from workbench.engine.weights import WeightBank
from workbench.infra.errors import WorkbenchError
from workbench.model.layout import GLU, LinearRef
from workbench.recovery.lora import AdapterHooks
from workbench.recovery.spec import HealSpec
from workbench.recovery.train import Cancel, Curve, Healed, Progress, Trainer


@dataclass
class Saved:
    """A saved run to put back instead of training: its trained tensors and curve; `where` names the file."""

    tensors: dict[str, torch.Tensor]
    curve: Curve
    where: str


class Healing:
    """A finished healing run held on the model: `undo` puts every trained linear back as it was."""

    def __init__(self, healed: Healed, refs: list[LinearRef], before: dict[str, torch.Tensor]):
        self.healed, self.refs, self._before = healed, refs, before
        self.hooks = AdapterHooks(refs, healed.adapters) if healed.adapters else None

    def undo(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()
        put_back(self.refs, self._before)

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """The model as it was before healing while inside (for the dense reference's probes)."""
        stash = {ref.name: ref.module.weight.data for ref in self.refs if ref.name in self._before}
        if self.hooks is not None:
            self.hooks.enabled = False
        try:
            for ref in self.refs:
                if ref.name in stash:
                    ref.module.weight.data = self._before[ref.name].to(ref.module.weight.device)
            yield
        finally:
            for ref in self.refs:
                if ref.name in stash:
                    ref.module.weight.data = stash[ref.name]
            if self.hooks is not None:
                self.hooks.enabled = True


def put_back(refs: list[LinearRef], before: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for ref in refs:
            if ref.name in before:
                ref.module.weight.copy_(before[ref.name])


def healed_refs(linears: list[list[LinearRef]], running, spec: HealSpec) -> list[LinearRef]:
    """The linears that train: the spec's kinds, in blocks (and experts) still in the forward pass."""
    kinds = spec.target_kinds()
    refs = [r for block in linears for r in block if r.kind in kinds and running(r)]
    mlp = sorted({r.kind for r in refs if r.kind in GLU})
    if spec.form == "adapter" and mlp and any(r.expert is not None for block in linears for r in block):
        raise WorkbenchError("heal.form", f"the adapter form cannot train the MLP linears ({','.join(mlp)}) of a "
                                          "mixture-of-experts model: peft would load such an adapter onto the fused "
                                          "experts; use masked or sparse, or --targets q,k,v,o")
    if not refs:
        raise WorkbenchError("heal.targets", f"no linear of kind {spec.targets} is in the model's forward pass")
    return refs


def heal(loaded, linears, bank: WeightBank, running, spec: HealSpec, data: str, progress: Progress | None,
         cancel: Cancel | None, checkpoint: Path | None, resume: Path | None, saved: Saved | None,
         unheal: Callable[[], None]) -> Healing:
    """Train `spec` on the pruned model, or put a saved run's tensors in (`saved`). The spec, data and
    layout are checked first; then `unheal` takes off an earlier healing. On cancel or error the model is
    put back as it was."""
    refs = healed_refs(linears, running, spec)
    trainer = Trainer(loaded.model, loaded.tokenizer, loaded.device, refs, spec, data)
    unheal()
    trainer.keep = {r.name: (r.module.weight != 0) if bank.assignment(r.name) else None for r in refs}
    before = {} if spec.form == "adapter" else {r.name: r.module.weight.detach().to("cpu", copy=True) for r in refs}
    try:
        if saved is None:
            healed = trainer.run(progress, cancel, checkpoint, resume)
        else:
            healed = trainer.restore(saved.tensors, saved.curve, saved.where)
    except BaseException:
        put_back(refs, before)
        raise
    return Healing(healed, refs, before)
