"""Fault injection shared by the tests: a disk that fills up under `workbench.infra.atomic`'s writes."""

from __future__ import annotations

import errno
import io
import os


class FullDisk(io.RawIOBase):
    """A file descriptor that takes `room` more bytes, then fails every write with ENOSPC."""

    def __init__(self, fd: int, room: int):
        self.fd, self.room = fd, room

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(self.fd, bytes(data[:self.room]))
        self.room -= written
        return written

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def full_disk_file(fd: int, mode: str, encoding: str | None, room: int):
    """What `os.fdopen(fd, mode, encoding=...)` returns on a disk with `room` bytes left."""
    raw = io.BufferedWriter(FullDisk(fd, room))
    return raw if "b" in mode else io.TextIOWrapper(raw, encoding=encoding)
