"""A healing run as a session keeps it: the spec, the loss curves, the probes before healing, and the
trained tensors in a safetensors file beside the session (`NAME.heal.safetensors`) with its SHA-256."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from workbench.infra.tensorfile import beside, load_tensors, save_tensors
from workbench.probes import ProbeResult
from workbench.recovery.spec import HealSpec
from workbench.recovery.train import Curve, Healed


@dataclass
class HealRecord:
    """A healing run held in a session (the [heal] table)."""

    spec: HealSpec
    curve: Curve
    seconds: float
    tokens_per_second: float
    trained_params: int
    digest: str  # SHA-256 of the trained tensors (see `workbench.recovery.train.digest_of`)
    file: str = ""  # the trained tensors beside the session
    sha256: str = ""  # of that file
    before: list[ProbeResult] = field(default_factory=list)  # the pruned model's probes before healing

    @classmethod
    def of(cls, healed: Healed, before: list[ProbeResult] | None = None) -> "HealRecord":
        return cls(healed.spec, healed.curve, healed.seconds, healed.tokens_per_second, healed.trained_params,
                   healed.digest, before=list(before or []))

    def to_dict(self) -> dict:
        """The run without its probes before healing (the session's table adds them)."""
        data = {"spec": self.spec.to_dict(), "curve": asdict(self.curve), "seconds": self.seconds,
                "tokens_per_second": self.tokens_per_second, "trained_params": self.trained_params,
                "digest": self.digest}
        if self.file:
            data.update(file=self.file, sha256=self.sha256)
        return data


def heal_file_for(session_path: str | os.PathLike) -> Path:
    """`NAME.heal.safetensors` beside `NAME.toml`."""
    return beside(session_path, "heal")


def load_trained(path: Path, sha256: str, where: str) -> dict[str, torch.Tensor]:
    """The trained tensors of a heal file, refused in one line when missing or changed."""
    return load_tensors(path, sha256, where, "replay --recompute retrains instead")


def attach_heal_file(session, healed: Healed, before: list[ProbeResult], session_path: str | os.PathLike) -> Path:
    """Write the trained tensors beside the session file and record the run as its [heal] table."""
    path = heal_file_for(session_path)
    record = HealRecord.of(healed, before)
    record.sha256 = save_tensors(path, healed.trained, "workbench-heal-1")
    record.file = path.name
    session.sections["heal"] = record
    return path
