"""Files and directories written so that any reader, and a kill -9 at any moment, sees the old version or
the new one, never a mix: the data goes to a temporary sibling (`.NAME.XXXX.tmp`) that the writer holds an
flock on, is fsynced, and os.replace puts it in place. A failed write (disk full, permission denied, a
directory in the way) is one WorkbenchError naming the file and the reason, leaves the previous version
untouched and removes its temporary. A killed writer's temporary stays; the next write to the same path
removes it once no process holds its lock and it is older than STALE_AFTER_S. Never imports textual."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from workbench.infra.errors import WorkbenchError

STALE_AFTER_S = 60.0
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors) report an OS error


def failure_reason(exc: BaseException) -> str | None:
    """The OS-level reason of a failed write, "no space left on device", for an OSError or a library
    error that carries an OS error code (safetensors: "... (os error 28)"); None for anything else."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        found = _OS_ERROR_CODE.search(str(exc))
        if found is None:
            return str(exc) if isinstance(exc, OSError) else None
        code = int(found.group(1))
    return os.strerror(code).lower()


def remove_stale(parent: Path, name: str, now: float | None = None) -> list[Path]:
    """Remove the temporaries `.NAME.*.tmp` in `parent` that killed writers left: those no process holds
    a lock on and older than STALE_AFTER_S (a live writer holds its lock from creation to rename).
    Returns the paths removed."""
    now = time.time() if now is None else now
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    removed = []
    for entry in sorted(e for e in entries if e.startswith(f".{name}.") and e.endswith(".tmp")):
        path = parent / entry
        try:
            if now - path.lstat().st_mtime < STALE_AFTER_S:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable; the file is already in place, so a failure here is ignored."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically; see `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring); any OSError becomes one WorkbenchError
    naming the file, with the previous file intact and no temporary left."""
    path = Path(path)
    existed, tmp = False, None
    try:
        existed = os.path.isfile(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        _fsync_directory(path.parent)
    except OSError as exc:
        after = "the previous file is unchanged" if existed else "nothing was written"
        raise WorkbenchError(str(path), f"cannot write: {failure_reason(exc)}; {after}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: Path, where: str) -> Iterator[Path]:
    """Yield a locked temporary sibling of `target` (absent or an empty directory) to fill; when the block
    ends it replaces `target`. On any failure it is removed, and a file-system error (also one a library
    reports with an OS error code) becomes one WorkbenchError at `where`."""
    tmp, fd = None, None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target.parent, target.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        fd = os.open(tmp, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
        tmp = None
        _fsync_directory(target.parent)
    except Exception as exc:
        reason = failure_reason(exc)
        if reason is None:
            raise
        raise WorkbenchError(where, f"cannot write: {reason}; nothing was written") from None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
