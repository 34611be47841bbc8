"""What a healing run does: its form, its LoRA shape, its optimizer and its data, declared once."""

from __future__ import annotations

from dataclasses import asdict, field, make_dataclass

from workbench.infra.errors import WorkbenchError
from workbench.infra.params import Param, complete
from workbench.model.layout import LINEAR_PATHS

# How the cut is kept: `masked` trains a LoRA delta multiplied by each linear's keep mask and merges it
# (the merged model is the trained one and has the same zeros); `adapter` keeps the LoRA adapter apart
# from the sparse base (exported beside it); `sparse` trains the kept weights themselves and puts the
# mask back after every step.
FORMS = ("masked", "adapter", "sparse")
ALL_TARGETS = tuple(LINEAR_PATHS)

HEAL_PARAMS = (
    Param("form", "masked", "how the cut is kept: masked LoRA merged, adapter kept apart, or sparse fine-tuning",
          choices=FORMS),
    Param("steps", 100, "optimizer steps", low=1, whole=True),
    Param("rank", 8, "LoRA rank (masked and adapter forms)", low=1, whole=True),
    Param("alpha", 16.0, "LoRA alpha: the delta is scaled by alpha / rank", low=0, open_low=True),
    Param("lr", 2e-4, "AdamW learning rate", low=0, open_low=True),
    Param("batch", 4, "token windows per step", low=1, whole=True),
    Param("seqlen", 128, "tokens per window", low=2, whole=True),
    Param("seed", 0, "seed of the windows drawn and of the adapter's initialisation", low=0, whole=True),
    Param("targets", ",".join(ALL_TARGETS), f"comma-separated linears that train ({', '.join(ALL_TARGETS)})"),
    Param("heldout_every", 10, "steps between held-out losses (and checkpoints)", low=1, whole=True),
    Param("heldout_windows", 4, "held-out windows of seqlen tokens the held-out loss averages", low=1, whole=True),
    Param("checkpointing", "off", "gradient checkpointing: activations of one block instead of all",
          choices=("off", "on")),
    Param("data", "", "data spec to heal on (embedded, hf:NAME, a .txt/.jsonl file); empty: the calibration source"),
)


class _HealSpecMethods:
    """The methods of `HealSpec`, whose fields are HEAL_PARAMS."""

    @classmethod
    def of(cls, values: dict, where: str = "heal"):
        """A checked spec from `values` (defaults for the rest); one-line errors name `where.KEY`."""
        spec = HealSpec(**complete("healing", "", HEAL_PARAMS, values, where))
        spec.target_kinds(where)
        return spec

    def target_kinds(self, where: str = "heal") -> tuple[str, ...]:
        """The linear kinds that train, checked."""
        kinds = tuple(k.strip() for k in self.targets.split(",") if k.strip())
        unknown = [k for k in kinds if k not in ALL_TARGETS]
        if not kinds or unknown:
            raise WorkbenchError(f"{where}.targets", f"unknown linear(s) {', '.join(unknown) or '(none given)'} "
                                                     f"(use {', '.join(ALL_TARGETS)})")
        return kinds

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


HealSpec = make_dataclass("HealSpec", [(p.name, type(p.default), field(default=p.default)) for p in HEAL_PARAMS],
                          bases=(_HealSpecMethods,), frozen=True)
HealSpec.__doc__ = "One healing run: a field per HEAL_PARAMS entry."
