"""File faults survived, nothing lost: a full disk while saving a session or exporting a model is one
error line naming the file, with the previous file intact and no temporary left; a writer killed with
SIGKILL at any moment leaves the old file or the new one, never a mix, and readers never see a partial
file; the next save removes what killed writers left, never a live writer's temporary."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from tests.faults import full_disk_file
from workbench.cli.main import main
from workbench.domain.session import Session, load_session, save_session, session_to_dict
from workbench.infra import atomic
from workbench.infra.atomic import STALE_AFTER_S, atomic_write_text, failure_reason, remove_stale
from workbench.infra.errors import WorkbenchError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--samples", "4", "--seqlen", "32"]


def fill_disk_after(monkeypatch, room: int) -> None:
    """Every file atomic_write_text opens from now on gets `room` bytes before the disk is full."""
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode="r", encoding=None: full_disk_file(fd, mode, encoding, room))


def full_at_fsync(monkeypatch) -> None:
    """The data is accepted but the flush to disk reports ENOSPC (delayed allocation, network file systems)."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", fsync)


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def big_session(entries: int, label: str) -> Session:
    history = [{"label": f"{label} edit {i}", "plan": {"sparsity": 0.5, "note": "x" * 200}} for i in range(entries)]
    return Session(model="tiny", history=history, versions={"workbench": "test"})


@pytest.mark.parametrize("fault", ["write", "fsync"])
def test_disk_full_during_save_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch, fault):
    path = tmp_path / "s.toml"
    save_session(big_session(3, "old"), path)
    before = path.read_bytes()
    if fault == "write":
        fill_disk_after(monkeypatch, 4096)
    else:
        full_at_fsync(monkeypatch)
    with pytest.raises(WorkbenchError) as caught:
        save_session(big_session(200, "new"), path)
    assert caught.value.where == str(path)
    assert caught.value.what == "cannot write: no space left on device; the previous file is unchanged"
    assert path.read_bytes() == before
    assert temporaries(tmp_path) == []


def test_disk_full_on_a_first_save_leaves_nothing(tmp_path, monkeypatch):
    fill_disk_after(monkeypatch, 100)
    with pytest.raises(WorkbenchError, match="no space left on device; nothing was written"):
        atomic_write_text(tmp_path / "new.toml", "x" * 100_000)
    assert list(tmp_path.iterdir()) == []


def test_cli_save_session_on_a_full_disk_is_one_line_and_exit_2(tiny_model_dir, tmp_path, monkeypatch, capsys):
    session = tmp_path / "s.toml"
    session.write_text("previous = true\n")
    fill_disk_after(monkeypatch, 1000)
    code = main(["prune", "--model", str(tiny_model_dir), "--sparsity", "0.5", "--probes", "", *TINY,
                 "--save-session", str(session)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"workbench: error: {session}: cannot write: no space left on device; "
                   "the previous file is unchanged\n")
    assert session.read_text() == "previous = true\n"
    assert temporaries(tmp_path) == []


def _weights_fail_part_way(monkeypatch) -> None:
    """safetensors writes half of the weights file, then reports a full disk the way it does (a Rust I/O
    error carrying the OS error code, not an OSError)."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 50_000)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_file)


def test_cli_export_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "export"
    _weights_fail_part_way(monkeypatch)
    code = main(["prune", "--model", str(tiny_model_dir), "--sparsity", "0.5", "--probes", "", *TINY,
                 "--export", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"workbench: error: --export {out}: cannot write: no space left on device; nothing was written\n"
    assert list(tmp_path.iterdir()) == []


def test_export_disk_full_in_the_tokenizer_files_keeps_an_empty_target(engine, tmp_path, monkeypatch):
    out = tmp_path / "export"
    out.mkdir()

    def save_pretrained(directory):
        (Path(directory) / "tokenizer.json").write_text("{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(directory) / "tokenizer.json"))

    monkeypatch.setattr(engine.loaded.tokenizer, "save_pretrained", save_pretrained, raising=False)
    with pytest.raises(WorkbenchError) as caught:
        engine.export(out)
    assert str(caught.value) == f"--export {out}: cannot write: no space left on device; nothing was written"
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and list(out.iterdir()) == []


def test_export_refuses_a_file_in_the_way(engine, tmp_path):
    (tmp_path / "model").write_text("mine")
    with pytest.raises(WorkbenchError, match="exists and is not an empty directory"):
        engine.export(tmp_path / "model")
    assert (tmp_path / "model").read_text() == "mine"


def test_failure_reasons():
    assert failure_reason(OSError(errno.ENOSPC, "x")) == "no space left on device"
    assert failure_reason(PermissionError(errno.EACCES, "x")) == "permission denied"
    assert failure_reason(RuntimeError("I/O error: File too large (os error 27)")) == "file too large"
    assert failure_reason(RuntimeError("shape mismatch")) is None


def _limit_file_size() -> None:
    """In the child: writes past 2 kB fail with EFBIG (instead of the SIGXFSZ that would kill it)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, 2_000))


def test_real_write_limit_through_the_real_writers(tiny_model_dir, tmp_path):
    """No fault injection: the kernel refuses writes past 2 kB (RLIMIT_FSIZE, no root needed; EFBIG stands
    in for ENOSPC) under the real TOML writer and the real save_pretrained and safetensors."""
    session, out = tmp_path / "s.toml", tmp_path / "model"
    session.write_text("previous = true\n")
    prune = [sys.executable, "-m", "workbench.cli", "prune", "--model", str(tiny_model_dir), "--probes", "", *TINY]
    runs = [subprocess.run([*prune, *option], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           preexec_fn=_limit_file_size)
            for option in (["--save-session", str(session)], ["--export", str(out)])]
    assert [r.returncode for r in runs] == [2, 2], runs[0].stderr[-2000:] + runs[1].stderr[-2000:]
    assert runs[0].stderr.splitlines()[-1] == (f"workbench: error: {session}: cannot write: file too large; "
                                               "the previous file is unchanged")
    assert runs[1].stderr.splitlines()[-1] == (f"workbench: error: --export {out}: cannot write: file too large; "
                                               "nothing was written")
    assert session.read_text() == "previous = true\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


# ----- kill -9 --------------------------------------------------------------------------------------
WRITER = """
import os, sys, time
from pathlib import Path
from workbench.infra import atomic
path, texts, pause = Path(sys.argv[1]), [Path(a).read_text() for a in sys.argv[2:4]], float(sys.argv[4])
if pause:  # stop between the written, fsynced temporary and its rename, and say so
    real_fsync = atomic.os.fsync
    def fsync(fd):
        real_fsync(fd)
        print("fsynced", flush=True)
        time.sleep(pause)
    atomic.os.fsync = fsync
print("ready", flush=True)
i = 0
while True:
    atomic.atomic_write_text(path, texts[i % 2])
    i += 1
"""


def _writer(path: Path, a: Path, b: Path, pause: float) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(a), str(b), str(pause)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    return child


def test_sigkill_during_saves_leaves_the_old_or_the_new_file_never_a_mix(tmp_path):
    texts = [tomli_w.dumps(session_to_dict(big_session(6000, label))) for label in ("old", "new")]
    assert len(texts[0]) > 1_000_000
    sources = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for source, text in zip(sources, texts):
        source.write_text(text)
    work = tmp_path / "work"
    work.mkdir()
    path = work / "s.toml"
    atomic_write_text(path, texts[0])
    valid = {t.encode() for t in texts}

    reads, bad, stop = [0], [], threading.Event()

    def reader():
        while not stop.is_set():
            data = path.read_bytes()
            reads[0] += 1
            if data not in valid:
                bad.append(len(data))

    watcher = threading.Thread(target=reader)
    watcher.start()
    rng = random.Random(0)
    try:
        for kill in range(8):
            child = _writer(path, *sources, pause=0.0)
            time.sleep(rng.uniform(0.0, 0.4))
            child.kill()
            child.wait()
            child.stdout.close()
            assert path.read_bytes() in valid, f"kill {kill} left a mix"
            tomllib.loads(path.read_text())
        for kill in range(3):  # at a known point: the new content is in a temporary, not yet renamed
            before = path.read_bytes()
            child = _writer(path, *sources, pause=30.0)
            assert child.stdout.readline() == "fsynced\n"
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
            assert path.read_bytes() == before, "a kill before the rename changed the file"
    finally:
        stop.set()
        watcher.join()
    assert bad == [] and reads[0] > 20
    assert load_session(path).model == "tiny"

    left = temporaries(work)
    assert len(left) >= 3  # each kill at the known point left its temporary: nothing removed it yet
    old = time.time() - 2 * STALE_AFTER_S
    for name in left:
        os.utime(work / name, (old, old))
    atomic_write_text(path, texts[1])
    assert temporaries(work) == [] and path.read_text() == texts[1]


def test_a_live_writers_temporary_is_never_removed(tmp_path):
    path = tmp_path / "s.toml"
    live = tmp_path / ".s.toml.live.tmp"
    dead = tmp_path / ".s.toml.dead.tmp"
    other = tmp_path / ".other.toml.x.tmp"
    for stale in (live, dead, other):
        stale.write_text("partial")
        os.utime(stale, (time.time() - 2 * STALE_AFTER_S,) * 2)
    young = tmp_path / ".s.toml.young.tmp"
    young.write_text("partial")  # just created: its writer may not hold its lock yet
    with open(live) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another open file: conflicts as another process's lock would
        atomic_write_text(path, "x = 1\n")
        assert temporaries(tmp_path) == sorted([live.name, other.name, young.name])
    assert remove_stale(tmp_path, "s.toml") == [live]
    assert path.read_text() == "x = 1\n"


def test_a_killed_exports_temporary_directory_goes_at_the_next_export_a_live_one_stays(tmp_path):
    target = tmp_path / "model"
    killed = tmp_path / ".model.killed.tmp"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"\0" * 1000)
    os.utime(killed, (time.time() - 2 * STALE_AFTER_S,) * 2)
    with atomic.atomic_directory(target, "--export model") as tmp:
        assert not killed.exists()
        (tmp / "config.json").write_text("{}")
        assert remove_stale(tmp_path, "model", now=time.time() + 10 * STALE_AFTER_S) == []  # locked: ours
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (target / "config.json").read_text() == "{}"
