"""What the Heal screen shows, as plain rows (UI-free): each probe dense, before and after healing, and
the change with its paired 95% interval; a line on the run."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays unloaded until the model loads
    from workbench.probes import ProbeResult
    from workbench.recovery.record import HealRecord

COLUMNS = ("probe", "dense", "before", "after", "change [95%]")


def rows(record: HealRecord, after: list[ProbeResult], dense: dict[str, ProbeResult]) -> list[tuple[str, ...]]:
    """One row of text cells per probe measured before and after."""
    from workbench.studies.intervals import paired_interval

    before = {p.name: p for p in record.before}
    out = []
    for a in after:
        b = before.get(a.name)
        if b is None:
            continue
        d = dense.get(a.name)
        interval = paired_interval(b, a)
        change = f"{a.score - b.score:+.3f}"
        if interval is not None:
            change += f" [{interval.low:+.3f}, {interval.high:+.3f}]"
        out.append((a.name, "-" if d is None else f"{d.score:.3f}", f"{b.score:.3f}", f"{a.score:.3f}", change))
    return out


def summary(record: HealRecord) -> str:
    """The run in one line: form, steps, trained parameters, held-out loss first and last, speed."""
    spec, curve = record.spec, record.curve
    return (f"{spec.form} healing, {spec.steps} steps of {spec.batch} x {spec.seqlen} tokens, "
            f"{record.trained_params:,} parameters trained; held-out loss {curve.heldout[0]:.3f} -> "
            f"{curve.heldout[-1]:.3f}; {record.seconds:.0f} s, {record.tokens_per_second:.0f} tokens/s")
