"""A feature is one folder of `workbench.features`: the app finds its `Feature` there and sessions find its
table there, with no list to extend elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import workbench.features
from workbench.domain.sections import SECTIONS
from workbench.domain.session import Session, load_session, save_session
from workbench.infra.errors import WorkbenchError
from workbench.studies.sensitivity import Sensitivity

FOLDERS = Path(workbench.features.__file__).parent


def test_every_feature_folder_registers_its_feature_and_the_app_takes_them_in_order():
    from workbench.tui.app import FEATURES

    folders = sorted(p.parent.name for p in FOLDERS.glob("*/feature.py"))
    assert sorted(f.name for f in FEATURES) == folders
    assert [f.name for f in FEATURES] == ["plots", "compare", "sensitivity", "agent", "heal"]


def test_every_section_file_registers_one_session_table():
    assert SECTIONS.names() == sorted(p.parent.name if p.parent.name != "compare" else "comparison"
                                      for p in FOLDERS.glob("*/section.py"))


def test_registry_discovers_one_module_in_each_subpackage(tmp_path, monkeypatch):
    """What a new feature folder gets: its section.py found without an import anywhere else."""
    package = tmp_path / "extras"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from workbench.infra.registry import Registry\nTABLES = Registry('table', 'extras', module='section')\n")
    for name in ("alpha", "beta", "_hidden", "gamma"):
        (package / name).mkdir()
        (package / name / "__init__.py").write_text("")
        if name != "gamma":  # a folder without a section adds nothing
            (package / name / "section.py").write_text(f"from extras import TABLES\nTABLES.register({name!r})({name!r})\n")
    (package / "beta" / "other.py").write_text("raise AssertionError('only section.py is imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import extras

    assert extras.TABLES.names() == ["alpha", "beta"]
    assert extras.TABLES.entries() == ["alpha", "beta"]
    monkeypatch.delitem(sys.modules, "extras")


def test_a_section_round_trips_and_a_bad_one_names_its_key(tmp_path):
    scan = Sensitivity("kl", 0.1, 0.02, [0.5, None, 2.0], 1.0)
    path = tmp_path / "s.toml"
    save_session(Session(sections={"sensitivity": scan}), path)
    assert load_session(path).sections == {"sensitivity": scan}
    text = path.read_text().replace("count = 3", "count = 2")
    path.write_text(text)
    with pytest.raises(WorkbenchError, match=r"sensitivity\.blocks"):
        load_session(path)
    path.write_text(text.replace("[sensitivity]", "[unknown_feature]"))
    with pytest.raises(WorkbenchError, match="unknown_feature"):
        load_session(path)
