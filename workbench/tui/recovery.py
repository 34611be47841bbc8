"""The autosave recovery file: the app rewrites it (atomically) after every edit, so a crash or a dropped
SSH connection loses at most the edit in flight; it is removed once everything is saved. UI-free."""

from __future__ import annotations

import time
from pathlib import Path

import platformdirs


def default_recovery_path() -> Path:
    """~/.local/state/workbench/recovery.toml (or the platform's equivalent)."""
    return platformdirs.user_state_path("workbench") / "recovery.toml"


def write_recovery(session, path: Path) -> None:
    """Write `session` to the recovery file."""
    from workbench.session import save_session

    save_session(session, path)


def clear_recovery(path: Path) -> None:
    """Remove the recovery file if it exists."""
    path.unlink(missing_ok=True)


def describe_recovery(path: Path, now: float | None = None) -> str | None:
    """"autosaved 5 minutes ago" for an existing recovery file, None when there is none."""
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return None
    if age < 90:
        when = "moments ago"
    elif age < 90 * 60:
        when = f"{age / 60:.0f} minutes ago"
    elif age < 36 * 3600:
        when = f"{age / 3600:.0f} hours ago"
    else:
        when = f"{age / 86400:.0f} days ago"
    return f"autosaved {when}"
