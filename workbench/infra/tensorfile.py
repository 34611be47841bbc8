"""Tensors kept beside a session (a healing's trained tensors, self-generated calibration ids): a
safetensors file written atomically, recorded by its SHA-256 and read back only when it still matches."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from workbench.infra.atomic import atomic_write_bytes
from workbench.infra.errors import WorkbenchError


def beside(session_path, suffix: str) -> Path:
    """`NAME.SUFFIX.safetensors` beside `NAME.toml`."""
    path = Path(session_path)
    return path.with_name(f"{path.stem}.{suffix}.safetensors")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], kind: str) -> str:
    """Write `tensors` atomically (metadata format `kind`); the file's SHA-256."""
    from safetensors.torch import save

    data = save({n: t.contiguous() for n, t in tensors.items()}, metadata={"format": kind})
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: Path, sha256: str, where: str, instead: str) -> dict[str, torch.Tensor]:
    """The tensors of a file beside a session, refused in one line when missing or changed (`instead`:
    what the user can do, e.g. "replay --recompute retrains instead")."""
    from safetensors.torch import load

    if not path.is_file():
        raise WorkbenchError(where, f"{path} not found ({instead})")
    data = path.read_bytes()  # read once: hashed, then parsed
    if hashlib.sha256(data).hexdigest() != sha256:
        raise WorkbenchError(where, f"{path} does not match the recorded SHA-256 (changed since it was saved)")
    return load(data)
