"""The Compare feature's session table, [comparison]: the last comparison with its units (the same body as
a comparison file's, see `workbench.domain.session`)."""

from __future__ import annotations

from workbench.domain.sections import SECTIONS, Section
from workbench.domain.session import comparison_to_dict


def read(r, table: dict, prefix: str):
    return r.comparison(table, prefix)


SECTIONS.add(Section("comparison", comparison_to_dict, read))
