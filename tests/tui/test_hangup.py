"""A lost terminal ends the app cleanly: the app runs on a real pseudo-terminal, the terminal side is
closed (the kernel sends SIGHUP, as when an SSH connection drops), and the process must exit on its own
with status 129, keeping the last edit in the recovery file."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import pytest

from workbench.domain.session import load_session

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys, torch
from pathlib import Path
torch.set_num_threads(1)
from tests.conftest import make_engine
from workbench.tui.app import WorkbenchApp, run_in_terminal
app = WorkbenchApp(engine_factory=lambda **_: make_engine(), recovery_path=Path(sys.argv[1]))
run_in_terminal(app)
"""


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    end = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def _wait_exit(pid: int, seconds: float, failure: str) -> int:
    """The child's wait status once it exits; kill it and fail with `failure` after `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(failure)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_hangup_exits_cleanly_and_keeps_the_last_edit(tmp_path):
    recovery = tmp_path / "recovery.toml"
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        os.chdir(ROOT)
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
        env.pop("NO_COLOR", None)
        os.execvpe(sys.executable, [sys.executable, "-c", CHILD, str(recovery)], env)
    try:
        assert b"achieved" in _read_until(fd, b"achieved", 60)
        time.sleep(0.5)
        os.write(fd, b"\x1b[C")  # right arrow: block 0 to 51%
        end = time.monotonic() + 20
        while not recovery.exists() and time.monotonic() < end:
            _read_until(fd, b"\x00", 0.2)
    finally:
        os.close(fd)  # the terminal goes away: SIGHUP to the app
    status = _wait_exit(pid, 30, "the app did not exit after SIGHUP")
    assert os.WIFEXITED(status), f"killed by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 129
    assert load_session(recovery).plan.block_overrides == {0: pytest.approx(0.51)}


SLOW_LOAD = """
import sys, time
from pathlib import Path
from workbench.tui.app import WorkbenchApp, run_in_terminal
app = WorkbenchApp(engine_factory=lambda **_: time.sleep(60), recovery_path=Path(sys.argv[1]))
run_in_terminal(app)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_quit_during_a_load_ends_the_process_at_once(tmp_path):
    """Quit while the model loads (a thread worker that cannot be interrupted, here a minute), then the
    terminal goes away: the process ends within seconds (it used to wait for the load, and after the
    hangup its input thread spun forever)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
        os.execvpe(sys.executable, [sys.executable, "-c", SLOW_LOAD, str(tmp_path / "recovery.toml")], env)
    try:
        assert b"loading" in _read_until(fd, b"loading", 30)
        os.write(fd, b"q")
        _read_until(fd, b"\x00", 0.5)
    finally:
        os.close(fd)
    _wait_exit(pid, 10, "the app outlived quit and hangup during a load by 10 s")
