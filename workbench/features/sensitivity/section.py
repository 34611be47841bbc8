"""The sensitivity feature's session table, [sensitivity]: the last scan (see `Sensitivity.to_dict`)."""

from __future__ import annotations

from workbench.domain.sections import SECTIONS, Section
from workbench.studies.sensitivity import Sensitivity


def read(r, table: dict, prefix: str) -> Sensitivity:
    """The scan, every key typed and every block index within the model's count."""
    r.known(table, prefix, {"probe", "step", "base", "seconds", "blocks", "deltas", "count"})
    count = r.get(table, "count", prefix, int, required=True)
    blocks = r.get(table, "blocks", prefix, list, required=True)
    deltas = r.get(table, "deltas", prefix, list, required=True)
    if len(blocks) != len(deltas) or not all(isinstance(b, int) and 0 <= b < count for b in blocks):
        raise r.fail(f"{prefix}blocks", f"expected one delta per block index in 0..{count - 1}")
    for key in ("step", "base"):
        r.get(table, key, prefix, (int, float), required=True)
    r.get(table, "probe", prefix, str, required=True)
    return Sensitivity.from_dict(table)


SECTIONS.add(Section("sensitivity", Sensitivity.to_dict, read))
