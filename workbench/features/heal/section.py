"""The healing feature's session table, [heal]: the run's spec, loss curves, digest, the trained tensors'
file beside the session, and the probes before healing (see `workbench.recovery.record.HealRecord`)."""

from __future__ import annotations

from workbench.domain.sections import SECTIONS, Section
from workbench.domain.session import probe_to_dict
from workbench.recovery.record import HealRecord
from workbench.recovery.spec import HEAL_PARAMS, HealSpec
from workbench.recovery.train import Curve


def read(r, table: dict, prefix: str) -> HealRecord:
    """The run, every key typed; the spec checked as a new run's would be."""
    r.known(table, prefix, {"spec", "curve", "seconds", "tokens_per_second", "trained_params", "digest", "file",
                            "sha256", "before"})
    spec_table = r.table(table, "spec", prefix, required=True)
    r.known(spec_table, f"{prefix}spec.", {p.name for p in HEAL_PARAMS})
    spec = HealSpec.of(spec_table, f"{r.path}: {prefix}spec")
    curve = r.table(table, "curve", prefix, required=True)
    r.known(curve, f"{prefix}curve.", {"loss", "heldout_steps", "heldout"})
    loss = r.numbers(r.get(curve, "loss", f"{prefix}curve.", list, required=True), f"{prefix}curve.loss")
    heldout = r.numbers(r.get(curve, "heldout", f"{prefix}curve.", list, required=True), f"{prefix}curve.heldout")
    steps = r.get(curve, "heldout_steps", f"{prefix}curve.", list, required=True)
    if len(steps) != len(heldout) or not all(isinstance(s, int) and 0 <= s <= spec.steps for s in steps):
        raise r.fail(f"{prefix}curve.heldout_steps", f"expected one step in 0..{spec.steps} per held-out loss")
    file = r.get(table, "file", prefix, str, default="")
    sha256 = r.get(table, "sha256", prefix, str, default="")
    if bool(file) != bool(sha256):
        raise r.fail(f"{prefix}file", "file and sha256 go together")
    return HealRecord(spec, Curve(loss, steps, heldout), r.get(table, "seconds", prefix, (int, float), default=0.0),
                      r.get(table, "tokens_per_second", prefix, (int, float), default=0.0),
                      r.get(table, "trained_params", prefix, int, required=True),
                      r.get(table, "digest", prefix, str, required=True), file, sha256,
                      r.probes(table, "before", prefix) if "before" in table else [])


def write(record: HealRecord) -> dict:
    data = record.to_dict()
    if record.before:
        data["before"] = [probe_to_dict(p) for p in record.before]
    return data


SECTIONS.add(Section("heal", write, read))
