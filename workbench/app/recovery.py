"""The autosave recovery files: the app rewrites its own (atomically) after every edit, so a crash or a
dropped SSH connection loses at most the edit in flight; it is removed once everything is saved.

Every running app owns one slot: `recovery.toml`, or `recovery-2.toml`, `recovery-3.toml`... while other
instances run, each with an flock on its `NAME.lock` sibling held for as long as the app runs (the kernel
drops it when the process dies, however it dies). A recovery file whose lock nobody holds is an orphan:
its app crashed or lost its terminal. A start takes the lock of the newest orphan and offers to restore
it; a file that a live instance holds is never offered, overwritten or removed. UI-free."""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from workbench.infra.atomic import failure_reason
from workbench.infra.errors import WorkbenchError


@dataclass
class RecoverySlot:
    """This instance's recovery file, the open descriptor of its locked lock file, and whether the file
    was left by an instance that is gone (then the app offers to restore it)."""

    path: Path
    lock_fd: int | None
    orphan: bool


def default_recovery_path() -> Path:
    """~/.local/state/workbench/recovery.toml (or the platform's equivalent): the first slot."""
    return platformdirs.user_state_path("workbench") / "recovery.toml"


def lock_path(path: Path) -> Path:
    """The lock file of a recovery file: `recovery.toml.lock`."""
    return path.with_name(f"{path.name}.lock")


def slot_path(base: Path, number: int) -> Path:
    """Slot 1 is `base` itself, slot n > 1 is `STEM-n.SUFFIX` beside it."""
    return base if number == 1 else base.with_name(f"{base.stem}-{number}{base.suffix}")


def recovery_files(base: Path) -> list[Path]:
    """The existing recovery files of every slot of `base`, newest first."""
    pattern = re.compile(rf"{re.escape(base.stem)}(-[0-9]+)?{re.escape(base.suffix)}")
    found = []
    try:
        entries = os.listdir(base.parent)
    except OSError:
        return []
    for entry in entries:
        if pattern.fullmatch(entry):
            try:
                found.append((os.stat(base.parent / entry).st_mtime, base.parent / entry))
            except OSError:
                continue
    return [path for _, path in sorted(found, reverse=True)]


def _try_lock(lock: Path) -> int | None:
    """Open (create) and flock `lock` without waiting: the descriptor, or None when a process holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its owner removed it between our open and our lock: lock the file there now


def claim_recovery(base: Path, adopt: bool = True) -> RecoverySlot:
    """Take a slot for this instance and hold its lock: with `adopt`, the newest orphaned recovery file
    (`orphan` set), else the first slot with no file and no holder. OS errors are one WorkbenchError."""
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        if adopt:
            for path in recovery_files(base):
                fd = _try_lock(lock_path(path))
                if fd is None:
                    continue
                if path.exists():
                    return RecoverySlot(path, fd, orphan=True)
                os.close(fd)
        number = 1
        while True:
            path = slot_path(base, number)
            number += 1
            if path.exists():
                continue
            fd = _try_lock(lock_path(path))
            if fd is None:
                continue
            if not path.exists():
                return RecoverySlot(path, fd, orphan=False)
            os.close(fd)
    except OSError as exc:
        raise WorkbenchError(str(base.parent), f"no recovery file: {failure_reason(exc)}") from None


def release_recovery(slot: RecoverySlot) -> None:
    """Give the slot up (at exit): remove its lock file and drop the lock. The recovery file stays if it
    is still there (unsaved edits), for the next start to offer."""
    if slot.lock_fd is None:
        return
    lock_path(slot.path).unlink(missing_ok=True)
    os.close(slot.lock_fd)
    slot.lock_fd = None


def write_recovery(session, path: Path) -> None:
    """Write `session` to the recovery file (atomically; a failure is one WorkbenchError)."""
    from workbench.domain.session import save_session

    save_session(session, path)


class Autosave:
    """Rewrites of one recovery file from worker threads, newest first: `ticket()` (on the UI thread) numbers
    each write as it is queued, and a write whose ticket is no longer the newest (a later edit, or a
    clear) is dropped. A failing streak (disk full...) is reported once."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._newest = 0
        self._failing = False

    def ticket(self) -> int:
        """Number the next write (or a clear, which drops every write still queued)."""
        self._newest += 1
        return self._newest

    def write(self, session, ticket: int) -> WorkbenchError | None:
        """Write `session` unless a newer write or clear was queued; the error of a failure that starts a
        failing streak, None otherwise."""
        with self._lock:
            if ticket != self._newest:
                return None
            try:
                write_recovery(session, self.path)
            except WorkbenchError as error:
                first, self._failing = not self._failing, True
                return error if first else None
            self._failing = False
            return None

    def clear(self) -> None:
        """Remove the recovery file and drop every write still queued."""
        self.ticket()
        with self._lock:
            clear_recovery(self.path)


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
