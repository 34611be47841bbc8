"""Theme files: one TOML file per theme in `themes/` at the top of the repository. UI-free.

    name = "dark"            # optional, defaults to the file name
    dark = true
    [colors]                 # primary is required; any of the keys below may be given
    primary = "#5fafff"
    [variables]              # optional Textual CSS variables, e.g. footer-key-foreground = "#ffffff"
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import workbench
from workbench.infra.errors import WorkbenchError

COLOR_KEYS = ("primary", "secondary", "accent", "warning", "error", "success", "foreground", "background",
              "surface", "panel", "boost")
DEFAULT_THEME = "dark"
NO_COLOR_THEME = "mono"
_HEX = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")


@dataclass(frozen=True)
class ThemeSpec:
    """A parsed theme file."""

    name: str
    dark: bool
    colors: dict[str, str]
    variables: dict[str, str] = field(default_factory=dict)


def themes_dir() -> Path:
    """The `themes/` directory next to the `workbench` package."""
    return Path(workbench.__file__).resolve().parent.parent / "themes"


def default_theme_name() -> str:
    """`mono` when NO_COLOR is set, else `dark`."""
    return NO_COLOR_THEME if "NO_COLOR" in os.environ else DEFAULT_THEME


def _color(value, where: str) -> str:
    if not isinstance(value, str) or not _HEX.match(value):
        raise WorkbenchError(where, f"expected a colour like \"#5fafff\", got {value!r}")
    return value


def parse_theme(text: str, path: Path) -> ThemeSpec:
    """Parse one theme file's text; errors name the file and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise WorkbenchError(str(path), f"invalid TOML: {exc}") from None
    unknown = sorted(set(data) - {"name", "dark", "colors", "variables"})
    if unknown:
        raise WorkbenchError(f"{path}: {unknown[0]}", "unknown key (known: name, dark, colors, variables)")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise WorkbenchError(f"{path}: name", "expected a non-empty string")
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise WorkbenchError(f"{path}: dark", "expected true or false")
    colors = data.get("colors")
    if not isinstance(colors, dict) or "primary" not in colors:
        raise WorkbenchError(f"{path}: colors.primary", "missing")
    extra = sorted(set(colors) - set(COLOR_KEYS))
    if extra:
        raise WorkbenchError(f"{path}: colors.{extra[0]}", f"unknown colour (known: {', '.join(COLOR_KEYS)})")
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise WorkbenchError(f"{path}: variables", "expected a table of strings")
    return ThemeSpec(
        name=name, dark=dark,
        colors={key: _color(value, f"{path}: colors.{key}") for key, value in colors.items()},
        variables=dict(variables),
    )


def load_themes(directory: Path | None = None) -> tuple[list[ThemeSpec], list[str]]:
    """Every `*.toml` theme in `directory` (default `themes_dir()`), sorted by name, and one error line
    per file that could not be used."""
    directory = themes_dir() if directory is None else directory
    specs: list[ThemeSpec] = []
    errors: list[str] = []
    for path in sorted(directory.glob("*.toml")):
        try:
            specs.append(parse_theme(path.read_text(encoding="utf-8"), path))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{path}: cannot read: {exc}")
        except WorkbenchError as exc:
            errors.append(str(exc))
    return sorted(specs, key=lambda s: s.name), errors
