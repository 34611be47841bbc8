"""Optional tables of a session that a feature owns ([comparison], [sensitivity], [agent]): each folder of
`workbench.features` registers its own from its `section.py`, so a feature adds a table to the session
schema without touching the session code, and headless commands read it without the UI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from workbench.infra.registry import Registry


@dataclass(frozen=True)
class Section:
    """A session table: `write(value)` gives its TOML-ready data, `read(reader, table, prefix)` the value back,
    checked, every error naming the file and the key (`reader` a `workbench.domain.session.Reader`; `prefix`
    is the table's name and a dot)."""

    name: str
    write: Callable[[Any], dict]
    read: Callable[[Any, dict, str], Any]


SECTIONS: Registry[Section] = Registry("session section", "workbench.features", module="section")
