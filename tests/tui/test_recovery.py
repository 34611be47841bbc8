"""Recovery files per instance, and saves that fail: two apps at once each autosave to their own file
under their own lock; a start is offered only a file that no live instance holds; clearing touches only
one's own file; a failed save or autosave is one notification, the app keeps running and the edit stays."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults import full_disk_file
from tests.tui.conftest import settle, tiny_factory
from workbench.domain.session import Session, load_session, save_session
from workbench.infra import atomic
from workbench.tui.screens.confirm import ConfirmScreen
from workbench.app.recovery import (claim_recovery, clear_recovery, lock_path, recovery_files, release_recovery,
                                    slot_path, write_recovery)

ROOT = Path(__file__).resolve().parents[2]


def session(sparsity: float) -> Session:
    from workbench.engine.facade import Plan

    return Session(model="tiny", plan=Plan(sparsity=sparsity), versions={"workbench": "test"})


def crash(slot) -> None:
    """What the kernel does when an instance dies: its lock is dropped, its files stay."""
    os.close(slot.lock_fd)
    slot.lock_fd = None


# ----- slots and locks (no app) -----------------------------------------------------------------------
def test_two_instances_autosave_to_their_own_files(tmp_path):
    base = tmp_path / "recovery.toml"
    a, b = claim_recovery(base), claim_recovery(base)
    assert (a.path, b.path) == (base, tmp_path / "recovery-2.toml")
    assert not a.orphan and not b.orphan
    write_recovery(session(0.3), a.path)
    write_recovery(session(0.6), b.path)
    write_recovery(session(0.35), a.path)
    assert load_session(a.path).plan.sparsity == 0.35
    assert load_session(b.path).plan.sparsity == 0.6
    release_recovery(a)
    release_recovery(b)


def test_a_start_is_offered_only_the_orphan(tmp_path):
    base = tmp_path / "recovery.toml"
    a, b = claim_recovery(base), claim_recovery(base)
    write_recovery(session(0.3), a.path)
    write_recovery(session(0.6), b.path)  # the newest file, but its instance is alive
    crash(a)
    c = claim_recovery(base)
    assert c.orphan and c.path == a.path
    assert load_session(c.path).plan.sparsity == 0.3
    d = claim_recovery(base)  # the orphan is being offered by c: d gets a fresh slot
    assert not d.orphan and d.path not in (a.path, b.path) and not d.path.exists()
    assert load_session(b.path).plan.sparsity == 0.6
    for slot in (b, c, d):
        release_recovery(slot)


def test_the_newest_orphan_is_offered_first_and_a_session_start_adopts_none(tmp_path):
    base = tmp_path / "recovery.toml"
    a, b = claim_recovery(base), claim_recovery(base)
    write_recovery(session(0.3), a.path)
    write_recovery(session(0.6), b.path)
    os.utime(a.path, (1e9, 1e9))
    crash(a)
    crash(b)
    fresh = claim_recovery(base, adopt=False)
    assert not fresh.orphan and fresh.path == slot_path(base, 3)
    first, second = claim_recovery(base), claim_recovery(base)
    assert (first.path, second.path) == (b.path, a.path) and first.orphan and second.orphan
    for slot in (fresh, first, second):
        release_recovery(slot)


def test_a_clean_exit_clears_only_its_own_file(tmp_path):
    base = tmp_path / "recovery.toml"
    a, b = claim_recovery(base), claim_recovery(base)
    write_recovery(session(0.3), a.path)
    write_recovery(session(0.6), b.path)
    clear_recovery(b.path)
    release_recovery(b)
    release_recovery(b)
    assert recovery_files(base) == [a.path]
    assert not lock_path(b.path).exists()
    assert not claim_recovery(base).orphan  # a is alive: nothing to offer
    release_recovery(a)
    again = claim_recovery(base)
    assert again.orphan and again.path == a.path  # a left with unsaved edits: offered now
    release_recovery(again)


def test_an_old_single_recovery_file_without_a_lock_is_offered(tmp_path):
    base = tmp_path / "recovery.toml"
    save_session(session(0.4), base)
    slot = claim_recovery(base)
    assert slot.orphan and slot.path == base and lock_path(base).exists()
    release_recovery(slot)


HOLDER = """
import os, sys, time
from pathlib import Path
from workbench.app.recovery import claim_recovery, write_recovery
from workbench.domain.session import Session
from workbench.engine.facade import Plan
slot = claim_recovery(Path(sys.argv[1]))
write_recovery(Session(model="tiny", plan=Plan(sparsity=float(sys.argv[2])), versions={"w": "t"}), slot.path)
print(slot.path, flush=True)
time.sleep(600)
"""


def test_a_live_process_keeps_its_file_and_sigkill_makes_it_an_orphan(tmp_path):
    base = tmp_path / "recovery.toml"
    children = [subprocess.Popen([sys.executable, "-c", HOLDER, str(base), value], cwd=ROOT, stdout=subprocess.PIPE,
                                 text=True) for value in ("0.2", "0.7")]
    try:
        paths = {Path(child.stdout.readline().strip()) for child in children}
        assert paths == {base, slot_path(base, 2)}
        mine = claim_recovery(base)
        assert not mine.orphan and mine.path == slot_path(base, 3)
        release_recovery(mine)
        children[1].send_signal(signal.SIGKILL)
        children[1].wait()
        adopted = claim_recovery(base)
        assert adopted.orphan and load_session(adopted.path).plan.sparsity == 0.7
        release_recovery(adopted)
    finally:
        for child in children:
            child.kill()
            child.wait()
            child.stdout.close()


# ----- the app ------------------------------------------------------------------------------------------
async def test_two_apps_at_once_then_a_third_is_offered_only_the_orphan(make_app, tmp_path):
    tiny_factory()  # transformers' lazy imports are not thread-safe: two first loads at once can fail
    first, second = make_app(), make_app()
    async with first.run_test(size=(80, 24)) as one:
        async with second.run_test(size=(80, 24)) as two:
            await settle(one)
            await settle(two)
            assert (first.recovery_path, second.recovery_path) == (tmp_path / "recovery.toml",
                                                                   tmp_path / "recovery-2.toml")
            await one.press("right")
            await two.press("left", "left")
            await settle(one)
            await settle(two)
            assert load_session(first.recovery_path).plan.block_overrides == {0: pytest.approx(0.51)}
            assert load_session(second.recovery_path).plan.block_overrides == {0: pytest.approx(0.48)}
        # the second left with unsaved edits (as after a crash): its file stays and its lock is gone
        third = make_app()
        async with third.run_test(size=(80, 24)) as three:
            await three.pause()
            assert isinstance(third.screen, ConfirmScreen)
            assert third.recovery_path == tmp_path / "recovery-2.toml"
            await three.press("y")
            await settle(three)
            assert third.controller.plan.block_overrides == {0: pytest.approx(0.48)}
            assert third.controller.dirty
            await one.press("right")
            await settle(one)
            assert load_session(first.recovery_path).plan.block_overrides == {0: pytest.approx(0.52)}
            await three.press("q")
        await one.press("q")
    assert load_session(tmp_path / "recovery.toml").plan.block_overrides == {0: pytest.approx(0.52)}
    assert load_session(tmp_path / "recovery-2.toml").plan.block_overrides == {0: pytest.approx(0.48)}


class _Disk:
    """A switchable full disk under atomic_write_text: writes fail with ENOSPC after 64 bytes."""

    def __init__(self, monkeypatch):
        self.full = False
        real = os.fdopen

        def fdopen(fd, mode="r", encoding=None):
            if not self.full:
                return real(fd, mode, encoding=encoding)
            return full_disk_file(fd, mode, encoding, room=64)

        monkeypatch.setattr(atomic.os, "fdopen", fdopen)


def temporaries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("fault", ["disk full", "permission denied", "a directory"])
async def test_a_failed_save_is_one_notification_and_the_edit_stays(make_app, tmp_path, monkeypatch, fault):
    monkeypatch.chdir(tmp_path)
    disk = _Disk(monkeypatch)
    target = tmp_path / "run.toml"
    reason = {"disk full": "no space left on device", "permission denied": "permission denied",
              "a directory": "is a directory"}[fault]
    if fault == "a directory":
        target.mkdir()
    else:
        target.write_text("previous = true\n")
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("right")
        await settle(pilot)
        assert app.controller.dirty and load_session(app.recovery_path).plan.block_overrides == {0: pytest.approx(0.51)}
        if fault == "disk full":
            disk.full = True
        elif fault == "permission denied":
            def refuse(*_, **__):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

            monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
        before = len(app.notices)
        await pilot.press("ctrl+s")
        await pilot.press(*"run.toml", "enter")
        await settle(pilot)
        for _ in range(40):
            if len(app.notices) > before:
                break
            await pilot.pause(0.05)
        failed = app.notices[before:]
        assert len(failed) == 1 and str(target) in failed[0] and reason in failed[0], "\n".join(failed)
        assert "\n" not in failed[0]
        assert app.is_running and app.controller.dirty and app.controller.session_path is None
        assert "unsaved" in str(app.query_one("#plan-line").render())
        assert load_session(app.recovery_path).plan.block_overrides == {0: pytest.approx(0.51)}
        await pilot.press("right")
        await settle(pilot)
        assert app.controller.plan.block_overrides == {0: pytest.approx(0.52)}
    if fault == "a directory":
        assert target.is_dir() and list(target.iterdir()) == []
    else:
        assert target.read_text() == "previous = true\n"
    assert temporaries(tmp_path) == []


async def test_a_failing_autosave_warns_once_and_keeps_the_last_good_file(make_app, tmp_path, monkeypatch):
    disk = _Disk(monkeypatch)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("right")
        await settle(pilot)
        disk.full = True
        before = len(app.notices)
        for _ in range(3):
            await pilot.press("right")
            await settle(pilot)
        warnings = [n for n in app.notices[before:] if "autosave failed" in n]
        assert len(warnings) == 1, app.notices[before:]
        assert str(app.recovery_path) in warnings[0] and "no space left on device" in warnings[0]
        assert app.is_running and app.controller.plan.block_overrides == {0: pytest.approx(0.54)}
        assert load_session(app.recovery_path).plan.block_overrides == {0: pytest.approx(0.51)}
        assert temporaries(tmp_path) == []
        disk.full = False
        await pilot.press("right")
        await settle(pilot)
        assert load_session(app.recovery_path).plan.block_overrides == {0: pytest.approx(0.55)}
        disk.full = True
        await pilot.press("right")
        await settle(pilot)
        assert len([n for n in app.notices[before:] if "autosave failed" in n]) == 2
        disk.full = False
        await pilot.press("q")
    assert load_session(tmp_path / "recovery.toml").plan.block_overrides == {0: pytest.approx(0.55)}
