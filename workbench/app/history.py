"""Undo/redo history of plan edits, stored in the session as `[[history]]` tables. UI-free.

Every entry is the whole plan after one edit (so undo and redo are just moves along the list) plus the
probe scores measured while that plan was applied. Entries after the current one are the redo tail; they
are saved with `undone = true`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from workbench.domain.plan import plan_from_dict, plan_to_dict


MERGE_S = 1.0


@dataclass
class Edit:
    """One step of the history: a label for people and the plan it led to. `source` and `time` (not saved)
    let quick repeated changes of one control merge into one step."""

    label: str
    plan: Any
    probes: dict[str, float] = field(default_factory=dict)
    source: Any = None
    time: float = 0.0


class EditHistory:
    """A linear undo/redo list of plans; a new edit drops the redo tail."""

    def __init__(self, start_plan, label: str = "start"):
        self.entries: list[Edit] = [Edit(label, copy.deepcopy(start_plan))]
        self.position = 0

    @property
    def current(self) -> Edit:
        """The entry whose plan is (or is being) applied."""
        return self.entries[self.position]

    def push(self, label: str, plan, source=None, now: float = 0.0) -> Edit:
        """Record an edit after the current entry, dropping anything that was undone. An edit of the same
        `source` (a slider, say) within MERGE_S seconds of the last one replaces it: holding an arrow key
        or dragging is one step to undo (and none if it ends where it began)."""
        current = self.current
        if (source is not None and source == current.source and not self.can_redo() and self.position > 0
                and now - current.time < MERGE_S and not current.probes):
            if plan == self.entries[self.position - 1].plan:  # back where it started: no step at all
                del self.entries[self.position]
                self.position -= 1
            else:
                current.label, current.plan, current.time = label, copy.deepcopy(plan), now
            return self.current
        del self.entries[self.position + 1:]
        self.entries.append(Edit(label, copy.deepcopy(plan), source=source, time=now))
        self.position += 1
        return self.current

    def can_undo(self) -> bool:
        return self.position > 0

    def can_redo(self) -> bool:
        return self.position < len(self.entries) - 1

    def undo(self) -> Edit | None:
        """Step back; the entry to apply now, or None at the start."""
        if not self.can_undo():
            return None
        self.position -= 1
        return self.current

    def redo(self) -> Edit | None:
        """Step forward again; the entry to apply now, or None at the end."""
        if not self.can_redo():
            return None
        self.position += 1
        return self.current

    def record_probes(self, scores: dict[str, float]) -> None:
        """Attach probe scores to the current entry."""
        self.current.probes.update(scores)

    def probe_series(self) -> tuple[list[int], dict[str, list[float | None]]]:
        """Entry numbers up to the current one and, per probe, its score at each (None: not measured)."""
        entries = self.entries[: self.position + 1]
        names = sorted({name for e in entries for name in e.probes})
        return list(range(len(entries))), {n: [e.probes.get(n) for e in entries] for n in names}

    def to_records(self) -> list[dict]:
        """The history as TOML-ready tables for `Session.history`."""

        return [
            {"label": e.label, "plan": plan_to_dict(e.plan), "probes": dict(e.probes),
             **({"undone": True} if i > self.position else {})}
            for i, e in enumerate(self.entries)
        ]

    @classmethod
    def from_records(cls, records: list[dict], plan) -> "EditHistory":
        """Rebuild from `Session.history`. Tables that are not history entries written by the app (for
        instance from another tool) are ignored; the current entry always carries `plan`, the session's."""
        entries = []
        for record in records:
            try:
                entries.append((Edit(str(record["label"]), plan_from_dict(record["plan"]),
                                     {str(k): float(v) for k, v in record.get("probes", {}).items()}),
                                bool(record.get("undone", False))))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        done = [e for e, undone in entries if not undone]
        if not done:
            return cls(plan, "opened")
        history = cls(done[0].plan, done[0].label)
        history.entries = [e for e, _ in entries]
        history.position = max(i for i, (_, undone) in enumerate(entries) if not undone)
        history.current.plan = copy.deepcopy(plan)
        return history
