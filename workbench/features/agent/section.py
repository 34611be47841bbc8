"""The Agent feature's session table, [agent]: an agent run's step log (see `AgentLog.to_dict`; the older
*_ppl names are read too)."""

from __future__ import annotations

from workbench.agent.record import LEGACY_NAMES, OUTCOMES, AgentLog, StepRecord
from workbench.domain.sections import SECTIONS, Section
from workbench.domain.signals import SIGNALS


def read(r, table: dict, prefix: str) -> AgentLog:
    """The step log: the scalars typed, every record's keys known."""
    r.known(table, prefix, set(AgentLog.__dataclass_fields__) | set(LEGACY_NAMES))
    for key in ("policy", "stop_reason", "agent_model", "agent_url", "system_prompt"):
        r.get(table, key, prefix, str, required=key == "policy", default="")
    if r.get(table, "measure", prefix, str, default="perplexity") not in SIGNALS:
        raise r.fail(f"{prefix}measure", f"expected one of {', '.join(SIGNALS)}")
    for key in ("target", "start", "start_score", "dense_score", "final_score", "seconds", *LEGACY_NAMES):
        r.get(table, key, prefix, (int, float), required=key in ("target", "start"), default=0.0)
    r.table(table, "settings", prefix)
    for i, record in enumerate(r.get(table, "records", prefix, list, default=[])):
        where = f"{prefix}records[{i}]."
        if not isinstance(record, dict):
            raise r.fail(where[:-1], "expected a table")
        r.known(record, where, set(StepRecord.__dataclass_fields__) | set(LEGACY_NAMES))
        if r.get(record, "outcome", where, str, required=True) not in OUTCOMES:
            raise r.fail(f"{where}outcome", f"expected one of {', '.join(OUTCOMES)}")
        r.get(record, "index", where, int, required=True)
        r.get(record, "sparsity", where, (int, float), required=True)
        for key in ("blocks", "by", "replies", "errors"):
            r.get(record, key, where, list, default=[])
    return AgentLog.from_dict(table)


SECTIONS.add(Section("agent", AgentLog.to_dict, read))
