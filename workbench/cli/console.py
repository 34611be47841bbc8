"""Terminal output shared by the headless commands."""

from __future__ import annotations

import sys


def progress_line(quiet: bool):
    """A one-line progress display on stderr when it is a terminal (None when quiet or redirected)."""
    if quiet or not sys.stderr.isatty():
        return None

    def show(message: str, fraction: float) -> None:
        sys.stderr.write(f"\r\033[K{fraction:4.0%} {message}")
        if fraction >= 1:
            sys.stderr.write("\r\033[K")
        sys.stderr.flush()

    return show
