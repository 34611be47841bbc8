"""Mask fingerprints and exact mask files: what "replays to the same numbers" means across machines.

A pruned linear's *mask* is which of its weights are kept (non-zero). Replaying a session recomputes
the masks from calibration statistics, and those statistics come out of floating-point matrix products
whose last bits differ between CPUs, BLAS kernels and GPUs; a score that sits next to a row's threshold
can then fall on the other side. So a session records, per linear, a *fingerprint* of its mask:

- `kept`: how many weights are kept (exact on any machine for every method here);
- `hash`: the first 16 hex digits of the SHA-256 of the bit-packed mask (row-major), for "identical";
- `sample`: the keep bits of `SAMPLE_SIZE` fixed positions (a stride walk with a prime step, so the
  same positions on any machine and any numpy), base64; replay estimates from them the share of keep/drop
  decisions that agree, without storing the whole mask.

The exact path: `save_mask_file` writes every linear's mask bit-packed (and, for linears whose kept
values are not the dense ones, e.g. SparseGPT's updated weights, those values) to a safetensors file
beside the session; `load_mask_file` reads it back, and `Engine.restore_masks` puts the weights back
bit for bit on any machine.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench.infra.errors import WorkbenchError

SAMPLE_SIZE = 512
_STEP = 2_654_435_761  # a prime larger than any linear's weight count here, hence coprime with it


@dataclass(frozen=True)
class MaskFingerprint:
    """Kept count, hash and sampled keep bits of one linear's mask."""

    kept: int
    hash: str
    sample: str

    def to_dict(self) -> dict:
        return {"kept": self.kept, "hash": self.hash, "sample": self.sample}


def sample_positions(numel: int, size: int = SAMPLE_SIZE) -> np.ndarray:
    """`size` distinct flat positions in [0, numel), the same on any machine: i * step + offset mod numel."""
    size = min(size, numel)
    i = np.arange(size, dtype=np.int64)
    return (i * (_STEP % numel) + numel // 3) % numel


def keep_mask(weight: torch.Tensor) -> torch.Tensor:
    """Boolean keep mask (True = non-zero) of a weight, on the CPU."""
    return (weight.detach() != 0).to("cpu")


def fingerprint(keep: torch.Tensor) -> MaskFingerprint:
    """The fingerprint of a boolean keep mask."""
    flat = keep.flatten().numpy()
    packed = np.packbits(flat)
    sample = np.packbits(flat[sample_positions(flat.size)])
    return MaskFingerprint(kept=int(flat.sum()), hash=hashlib.sha256(packed.tobytes()).hexdigest()[:16],
                           sample=base64.b64encode(sample.tobytes()).decode("ascii"))


def sample_bits(fp: MaskFingerprint, numel: int) -> np.ndarray:
    """The sampled keep bits of a fingerprint, as booleans."""
    size = min(SAMPLE_SIZE, numel)
    return np.unpackbits(np.frombuffer(base64.b64decode(fp.sample), dtype=np.uint8))[:size].astype(bool)


@dataclass
class MaskAgreement:
    """How far the masks of a replay agree with the recorded ones."""

    linears: int
    identical: int
    agreement: float
    exact: bool
    sampled: int
    kept_recorded: int
    kept_now: int
    missing: list[str]

    def to_dict(self) -> dict:
        return {"linears": self.linears, "identical": self.identical, "agreement": self.agreement,
                "exact": self.exact, "sampled": self.sampled, "kept_recorded": self.kept_recorded,
                "kept_now": self.kept_now, "missing": self.missing}

    def describe(self) -> str:
        """One line: identical linears and the share of agreeing decisions."""
        how = "exact" if self.exact else f"estimated from {self.sampled:,} sampled weights"
        return (f"masks: {self.identical}/{self.linears} linears identical, {self.agreement:.4%} of keep/drop "
                f"decisions agree ({how}); kept {self.kept_now:,} vs {self.kept_recorded:,} recorded")


def compare_fingerprints(recorded: dict[str, MaskFingerprint], current: dict[str, MaskFingerprint],
                         numels: dict[str, int]) -> MaskAgreement:
    """Agreement of current masks with recorded fingerprints. Each linear's sampled agreement is weighted
    by its weight count, so the share estimates the agreement over all weights."""
    missing = sorted(set(recorded) - set(current))
    names = [n for n in recorded if n in current]
    identical = sum(recorded[n].hash == current[n].hash for n in names)
    weighted, total, sampled = 0.0, 0, 0
    for n in names:
        a, b = sample_bits(recorded[n], numels[n]), sample_bits(current[n], numels[n])
        weighted += numels[n] * float((a == b).mean())
        total += numels[n]
        sampled += a.size
    return MaskAgreement(
        linears=len(recorded), identical=identical, agreement=weighted / total if total else 1.0,
        exact=identical == len(recorded) and not missing, sampled=sampled,
        kept_recorded=sum(fp.kept for fp in recorded.values()), kept_now=sum(current[n].kept for n in names),
        missing=missing,
    )


def exact_agreement(recorded: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> float:
    """Share of keep/drop decisions that agree between two sets of full boolean keep masks."""
    same = sum(int((recorded[n] == current[n]).sum()) for n in recorded)
    return same / max(1, sum(m.numel() for m in recorded.values()))


# ----- exact mask files -----------------------------------------------------------------------------
def mask_file_for(session_path: str | os.PathLike) -> Path:
    """Where the mask file of a session lives: beside it, `NAME.masks.safetensors`."""
    path = Path(session_path)
    return path.with_name(f"{path.stem}.masks.safetensors")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_mask_file(path: str | os.PathLike, weights: dict[str, torch.Tensor], dense: dict[str, torch.Tensor]) -> str:
    """Write every linear's keep mask (bit-packed) and, where the kept values differ from the dense
    weight, the kept values, as safetensors, atomically; return the file's SHA-256."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {"format": "workbench-masks-1"}
    for name, weight in weights.items():
        w = weight.detach().to("cpu")
        keep = w != 0
        tensors[f"{name}.mask"] = torch.from_numpy(np.packbits(keep.flatten().numpy()))
        metadata[f"{name}.shape"] = ",".join(str(d) for d in w.shape)
        kept = w[keep]
        if not torch.equal(kept, dense[name].to(w.dtype)[keep]):
            tensors[f"{name}.values"] = kept.contiguous()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file_sha256(path)


@dataclass
class StoredMask:
    """One linear's mask from a mask file, with its kept values when they are not the dense ones."""

    keep: torch.Tensor
    values: torch.Tensor | None


def load_mask_file(path: str | os.PathLike, sha256: str | None = None) -> dict[str, StoredMask]:
    """Read a mask file; refuse it in one line when it is missing, damaged or not the recorded one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(str(path), "mask file not found")
    if sha256 is not None and file_sha256(path) != sha256:
        raise WorkbenchError(str(path), "mask file does not match the session (SHA-256 differs)")
    try:
        out: dict[str, StoredMask] = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "workbench-masks-1":
                raise WorkbenchError(str(path), "not a workbench mask file")
            keys = set(f.keys())
            for key in sorted(k for k in keys if k.endswith(".mask")):
                name = key[: -len(".mask")]
                shape = tuple(int(d) for d in meta[f"{name}.shape"].split(","))
                bits = np.unpackbits(f.get_tensor(key).numpy())[: math.prod(shape)]
                keep = torch.from_numpy(bits.astype(bool)).view(shape)
                values = f.get_tensor(f"{name}.values") if f"{name}.values" in keys else None
                out[name] = StoredMask(keep, values)
        return out
    except WorkbenchError:
        raise
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise WorkbenchError(str(path), f"cannot read mask file: {exc}") from None
