"""Export: the model as it runs now, saved with save_pretrained (safetensors) and checked after writing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from workbench.infra.errors import WorkbenchError


def export(engine, directory: str | os.PathLike, notice: Callable[[str], None] | None = None) -> Path:
    """Save the pruned model and tokenizer with save_pretrained (safetensors), atomically: a failed export
    (disk full...) is one WorkbenchError and leaves neither the directory nor a temporary. A shrunk model
    is saved as the smaller architecture (fewer layers, smaller intermediate_size); `notice` hears when the
    layout had to be padded to be loadable. A healed model in the adapter form is saved as its sparse base
    plus the peft adapter in `adapter/`. The written linears' zeros are counted against the model's."""
    from workbench.infra.atomic import atomic_directory
    from workbench.model.experts import fused

    target = Path(directory).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise WorkbenchError(f"--export {target}", "exists and is not an empty directory")
    model, shaper = engine.loaded.model, engine.shaper
    config = model.config
    with (atomic_directory(target, f"--export {target}") as tmp, shaper.loadable(config) as note,
          shaper.experts.exported(config)):
        if note and notice:
            notice(note)
        with fused(model):  # experts saved in the model's own (fused) layout
            model.save_pretrained(tmp)
        engine.loaded.tokenizer.save_pretrained(tmp)
        healing = engine.healing
        if healing is not None and healing.healed.adapters:
            save_adapter(model, healing, Path(tmp) / "adapter")
        check_zeros(Path(tmp), engine, f"--export {target}")
    return target


def save_adapter(model: torch.nn.Module, healing, directory: Path) -> None:
    """The adapter form's LoRA in peft's own format (`PeftModel.from_pretrained(base, directory)` loads it)."""
    from workbench.recovery.lora import ADAPTER, attach, wrappers

    spec, refs = healing.healed.spec, healing.refs
    healing.hooks.enabled = False
    try:
        peft_model = attach(model, refs, spec.rank, spec.alpha, spec.seed)
        try:
            wrapped = wrappers(model)
            with torch.no_grad():
                for ref in refs:
                    wrapper, factors = wrapped[id(ref.module)], healing.healed.adapters[ref.name]
                    wrapper.lora_A[ADAPTER].weight.copy_(factors.A)
                    wrapper.lora_B[ADAPTER].weight.copy_(factors.B)
            peft_model.save_pretrained(str(directory))
        finally:
            peft_model.unload()
            model.requires_grad_(False)
    finally:
        healing.hooks.enabled = True


def check_zeros(directory: Path, engine, where: str) -> None:
    """Refuse an export whose block linears hold fewer zeros than the model's running linears do (a dense
    delta merged over a cut would show here)."""
    from safetensors import safe_open

    expected = sum(int((r.module.weight == 0).sum()) for block in engine.linears for r in block
                   if engine.shaper.running(r) and r.expert is None)  # routed experts are saved fused
    written = 0
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                if ".layers." in key and key.endswith("_proj.weight") and ".experts." not in key:
                    written += int((f.get_tensor(key) == 0).sum())
    if written < expected:
        raise WorkbenchError(where, f"the written weights hold {written:,} zeros, the model {expected:,}: not exported")
