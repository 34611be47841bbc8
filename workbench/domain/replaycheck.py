"""What `workbench replay --check` accepts, and why (UI-free).

On the machine that saved a session, replay rebuilds the same weights bit for bit (a test checks it).
On another machine the calibration statistics differ in their last bits (BLAS kernels, SIMD level), a
keep/drop decision next to a row's threshold flips, and in sequential calibration each flip changes
the inputs of every later block, so the differences grow with depth. Measured on the embedded model
(Wanda, sequential, 32 x 256 tokens) between this project's machine with its default kernels and the
same machine with ATen's generic kernels (`ATEN_CPU_CAPABILITY=default`) or MKL's AVX2 path
(`MKL_ENABLE_INSTRUCTIONS=AVX2`, the path MKL takes on AMD CPUs), plus the numbers of two other machines
in the project's history: the README's Reliability section has the table.

`--check` passes when
- the masks agree: at least `MIN_MASK_AGREEMENT` of all keep/drop decisions match the recorded ones
  (estimated from the fingerprints' sampled bits; exact when a mask file restored them), and the kept
  count matches exactly (every method here keeps an exact count);
- every recorded probe is within its tolerance (`ProbeResult.allowance`): perplexity relative, the
  exact-match probes in items. The probes' tolerances are derived from the same measurements.

Where the recorded and the replayed result both hold per-item right/wrong units (sessions of version 3),
each check also counts the items that flipped between the two runs; that is for information, the rule
above decides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from workbench.engine.masks import MaskAgreement
from workbench.probes import ProbeResult, flips

# Lowest agreement measured between two machines: 98.3% (Wanda uniform 70%, blocks 9 to 29 diverging);
# the threshold leaves that margin again below it.
MIN_MASK_AGREEMENT = 0.965


@dataclass
class ProbeCheck:
    """One recorded probe against its replayed score; `flips` counts the exact-match items right when
    recorded and wrong now ("lost") and the reverse ("gained"), None without per-item units on both sides."""

    name: str
    recorded: float
    now: float
    allowed: float
    ok: bool
    flips: dict[str, int] | None = None

    def describe(self, label: str = "") -> str:
        """One report line: recorded and replayed score, the allowance, the verdict, flipped items."""
        flipped = f", items {self.flips['lost']} lost / {self.flips['gained']} gained" if self.flips else ""
        return (f"  {label}{self.name:<12} recorded {self.recorded:>10.4f}   now {self.now:>10.4f}   "
                f"(allowed +-{self.allowed:.4g}) {'ok' if self.ok else 'DIFFERS'}{flipped}")


@dataclass
class ReplayReport:
    """Everything `replay` reports: the masks' agreement (None for a session without fingerprints),
    whether a mask file restored them, and each probe's check."""

    masks: MaskAgreement | None
    restored: bool
    probes: list[ProbeCheck]
    weights_sha256: str

    @property
    def masks_ok(self) -> bool:
        m = self.masks
        return m is None or (not m.missing and m.kept_now == m.kept_recorded and m.agreement >= MIN_MASK_AGREEMENT)

    @property
    def ok(self) -> bool:
        return self.masks_ok and all(p.ok for p in self.probes)

    def to_dict(self) -> dict:
        return {"masks": self.masks.to_dict() if self.masks else None, "masks_ok": self.masks_ok,
                "min_mask_agreement": MIN_MASK_AGREEMENT, "restored_from_mask_file": self.restored,
                "weights_sha256": self.weights_sha256, "probes": [asdict(p) for p in self.probes], "ok": self.ok}


def check_probes(recorded: list[ProbeResult], now: list[ProbeResult]) -> list[ProbeCheck]:
    """Each recorded probe against the replayed result of the same name, with its flipped items."""
    by_name = {p.name: p for p in now}
    return [ProbeCheck(r.name, r.score, by_name[r.name].score, r.allowance(), not r.differs(by_name[r.name]),
                       flips(r, by_name[r.name])) for r in recorded]
