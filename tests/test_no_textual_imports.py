"""The engine, sessions, CLI and every other non-UI module must work without textual: importing them
(and discovering every method, allocator and probe) must not load it, and none of them may import it
anywhere, not even inside a function. Only workbench/tui and the UI modules of the feature folders
(workbench/features/NAME/) may import it: a feature's job body (job.py), session section (section.py) and
package file stay UI-free, since headless commands and worker threads use them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import workbench

PACKAGE = Path(workbench.__file__).resolve().parent
CORE = ("engine.facade", "domain.session", "cli.main", "model.loader", "model.data", "engine.capture", "engine.stats",
        "methods", "allocators", "probes", "infra.registry", "infra.errors", "cli.bench", "app.controller",
        "app.history", "app.edits", "app.format", "app.themes", "app.recovery")
FORBIDDEN = ("textual", "textual_plotext")


def _module_files() -> list[Path]:
    """Every module outside the UI, and the UI-free modules of the feature folders."""
    return sorted(p for p in PACKAGE.rglob("*.py") if not _ui(p.relative_to(PACKAGE)))


def _ui(path: Path) -> bool:
    """Whether a module (relative to the package) may import textual."""
    if path.parts[0] == "features" and len(path.parts) == 3:
        return path.name not in UI_FREE
    return path.parts[0] == "tui"


UI_FREE = ("__init__.py", "job.py", "section.py")  # in a feature folder


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_no_module_outside_the_ui_imports_textual():
    offenders = []
    for path in _module_files():
        for name in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if name.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert offenders == []
    assert len(_module_files()) > len(CORE)


def test_importing_core_modules_does_not_load_textual():
    modules = [f"workbench.{name}" for name in CORE]
    code = "\n".join([
        "import importlib, sys",
        *[f"importlib.import_module({m!r})" for m in modules],
        "from workbench.methods import METHODS",
        "from workbench.allocators import ALLOCATORS",
        "from workbench.probes import PROBES",
        "METHODS.names(); ALLOCATORS.names(); PROBES.names()",
        "from workbench.cli.main import build_parser",
        "build_parser()",
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'textual_plotext'))",
        "print(','.join(loaded))",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
