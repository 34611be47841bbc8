"""Bad inputs and faults (issue #8): broken calibration files, wrong model specs, a damaged model cache and
Ctrl-C during a headless prune each end in one clear line (or a rebuild) and leave nothing half-written."""

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny import ByteTokenizer
from workbench.cli.main import main
from workbench.infra.errors import WorkbenchError
from workbench.model import cache as model_cache
from workbench.model import loader as model_module
from workbench.model.cache import cache_problem, cached_build
from workbench.model.data import CALIBRATION, EVALUATION, calibration_windows, evaluation_windows, load_texts
from workbench.model.loader import load_model

TINY = ["--samples", "4", "--seqlen", "32"]
BINARY = b"\xff\xfe\x00\x81" + bytes(range(256)) * 4

BAD_FILES = [
    ("empty.txt", b"", r"file is empty \(0 bytes\)"),
    ("empty.jsonl", b"", r"file is empty \(0 bytes\)"),
    ("binary.txt", BINARY, r"not UTF-8 text \(byte 0xff at offset 0\): a binary file\?"),
    ("binary.jsonl", BINARY, r"not UTF-8 text \(byte 0xff at offset 0\)"),
    ("nul.txt", b"text\x00more", r"contains NUL bytes \(first at offset 4\)"),
    ("blank.txt", b"\n\n   \n\n", r"no text \(only whitespace\)"),
    ("blank.jsonl", b"\n\n", r"no text"),
    ("notjson.jsonl", b'{"text": "a"}\nnot json at all\n', r"line 2: not JSON \(Expecting value at column 1\)"),
    ("field.jsonl", b'{"text": "a"}\n\n{"text": "b"}\n{"body": "c", "id": 3}\n', r"line 4: no 'text' field \(fields: 'body', 'id'\)"),
    ("array.jsonl", b'["text"]\n', r"line 1: expected a JSON object with a 'text' field, got list"),
    ("number.jsonl", b'{"text": 5}\n', r"line 1: 'text' must be a string, got int"),
]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("workbench: error: ")
    return err


# ----- calibration and evaluation files ----------------------------------------------------------
@pytest.mark.parametrize("name, content, message", BAD_FILES, ids=[f[0] for f in BAD_FILES])
def test_bad_data_file_is_one_error_naming_it(name, content, message, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    calls = [lambda: load_texts(str(path), CALIBRATION), lambda: load_texts(str(path), EVALUATION),
             lambda: calibration_windows(ByteTokenizer(), str(path), 2, 16),
             lambda: evaluation_windows(ByteTokenizer(), str(path), 16)]
    for call in calls:
        with pytest.raises(WorkbenchError, match=message) as err:
            call()
        assert err.value.where.startswith(f"data {str(path)!r}") and "\n" not in str(err.value)


def test_too_short_for_one_window_names_tokens_found_and_needed(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("\n\n".join(["abcd", "efgh", "held out", "ijkl", "mnop"]))
    # calibration part: "abcd\n\nefgh\n\nijkl\n\nmnop" = 22 byte tokens
    with pytest.raises(WorkbenchError) as err:
        calibration_windows(ByteTokenizer(), str(path), samples=4, seqlen=32)
    assert str(err.value) == (f"data {str(path)!r}: too short: 22 tokens in the calibration part, need at least 33 "
                              f"for one window of --seqlen 32 (4 x 32 = 128 without overlap)")
    assert calibration_windows(ByteTokenizer(), str(path), samples=4, seqlen=21).shape == (4, 21)
    with pytest.raises(WorkbenchError) as err:
        evaluation_windows(ByteTokenizer(), str(path), seqlen=16)
    assert str(err.value) == (f"data {str(path)!r}: too short: 8 tokens in the held-out evaluation part (every fifth "
                              f"document, from the third), need at least 16 for one 16-token window")


def test_local_files_read_as_datasets_reads_them(tmp_path):
    """Local files are read directly now; the documents must be the ones `datasets` gave before, so that
    sessions calibrated on a local file replay to the same token windows."""
    import datasets

    txt = tmp_path / "c.txt"
    txt.write_bytes("first para\r\nsame para\r\n\r\nsecond\n\n\n\nthird ü\n\n   \n\nfourth\rline\n\nlast".encode())
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "one", "id": 1}\n\n{"text": ""}\n{"text": "two\\nlines ü"}\r\n{"text": "three"}\n')
    ours_txt = load_texts(str(txt), CALIBRATION) + load_texts(str(txt), EVALUATION)
    ours_jsonl = load_texts(str(jsonl), CALIBRATION) + load_texts(str(jsonl), EVALUATION)
    cache = str(tmp_path / "hf-cache")
    theirs_txt = datasets.load_dataset("text", data_files=str(txt), split="train", sample_by="paragraph", cache_dir=cache)
    theirs_jsonl = datasets.load_dataset("json", data_files=str(jsonl), split="train", cache_dir=cache)
    expected_txt = [t for t in theirs_txt["text"] if t.strip()]
    expected_jsonl = [t for t in theirs_jsonl["text"] if t]
    assert len(expected_txt) == 5 and len(expected_jsonl) == 3
    assert sorted(ours_txt) == sorted(expected_txt) and sorted(ours_jsonl) == sorted(expected_jsonl)
    assert load_texts(str(txt), EVALUATION) == [expected_txt[2]]


@pytest.mark.parametrize("name, content, message", [BAD_FILES[0], BAD_FILES[3], BAD_FILES[8]], ids=["empty", "binary", "field"])
def test_prune_on_bad_calibration_file_exit_2_nothing_written(name, content, message, tiny_model_dir, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    code = main(["prune", "--model", str(tiny_model_dir), *TINY, "--calibration", str(path),
                 "--save-session", str(tmp_path / "s.toml"), "--export", str(tmp_path / "out")])
    assert code == 2
    assert f"data {str(path)!r}" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_held_out_part_too_short_fails_before_the_prune(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Enough text to calibrate but not for the perplexity probe's 256-token windows: the error comes
    before the prune runs (the dense reference is measured first), not after its work is done."""
    from workbench.engine.facade import Engine

    path = tmp_path / "small.txt"
    path.write_text("\n\n".join(f"paragraph {i}: " + "some words to calibrate on " * 8 for i in range(4)))
    monkeypatch.setattr(Engine, "prune", lambda *a, **k: pytest.fail("pruned before the probe data was checked"))
    assert main(["prune", "--model", str(tiny_model_dir), *TINY, "--calibration", str(path)]) == 2
    err = one_line_error(capsys)
    assert "too short" in err and "held-out evaluation part" in err and "need at least 256" in err


# ----- model specs --------------------------------------------------------------------------------
def test_model_spec_errors(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    empty_dir = tmp_path / "empty-dir"
    empty_dir.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    fake_gguf = tmp_path / "fake.gguf"
    fake_gguf.write_bytes(BINARY)
    accepted = ("(use embedded, a hub id (org/name), a local Hugging Face directory (with config.json), a .gguf file "
                "or random:SHAPE[@SEED] (random:llama-1b, random:PATH/config.json))")
    cases = [
        (str(text), f"is a file but not a .gguf file {accepted}"),
        (str(tmp_path / "missing" / "model"), f"no such file or directory {accepted}"),
        ("./missing-model", f"no such file or directory {accepted}"),
        (str(empty_dir), f"directory has no config.json, so it is not a Hugging Face model {accepted}"),
        (str(broken), "cannot load: Error while deserializing header"),
        (str(fake_gguf), "cannot read the GGUF file: "),
    ]
    for spec, message in cases:
        assert main(["stats", "--model", spec, "--no-calibration"]) == 2, spec
        err = one_line_error(capsys)
        assert err.startswith(f"workbench: error: model {spec!r}: ") and message in err, err
    # the failed GGUF conversion left no temporary in the cache
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [".fake-1028.lock"]


# ----- the converted-model cache ----------------------------------------------------------------
@pytest.fixture
def small_checks(monkeypatch):
    """Check constants scaled down so a 64 KiB file is sampled like the 540 MB weights are."""
    monkeypatch.setattr(model_cache, "CHECK_WHOLE_BELOW", 4096)
    monkeypatch.setattr(model_cache, "CHECK_SAMPLE_BYTES", 256)


def make_builder(calls: list):
    def build(out):
        calls.append(out)
        (out / "config.json").write_text('{"a": 1}')
        (out / "weights.bin").write_bytes(bytes(range(256)) * 256)  # 64 KiB: sampled

    return build


def damage_truncate(target):
    with open(target / "weights.bin", "r+b") as f:
        f.truncate(60000)
    return "weights.bin has 60,000 bytes, the manifest says 65,536"


def damage_sampled_bytes(target):
    with open(target / "weights.bin", "r+b") as f:
        f.seek(65536 - 10)  # inside the last sample
        f.write(b"\0" * 10)
    return "weights.bin does not match its SHA-256 in the manifest"


def damage_small_file(target):
    (target / "config.json").write_text('{"a": 2}')
    return "config.json does not match its SHA-256 in the manifest"


def damage_missing(target):
    (target / "weights.bin").unlink()
    return "weights.bin is missing"


def damage_manifest(target):
    (target / model_cache.MANIFEST).unlink()
    return "no manifest: a build that did not finish, or one by an older workbench"


def damage_manifest_garbage(target):
    (target / model_cache.MANIFEST).write_text("{not json")
    return "unreadable manifest"


@pytest.mark.parametrize("damage", [damage_truncate, damage_sampled_bytes, damage_small_file, damage_missing,
                                    damage_manifest, damage_manifest_garbage])
def test_damaged_cache_is_rebuilt_with_a_notice(damage, small_checks, tmp_path, capsys):
    target = tmp_path / "models" / "m-1"
    calls = []
    assert cached_build(target, make_builder(calls)) == target and len(calls) == 1
    assert cache_problem(target) is None
    cached_build(target, make_builder(calls))
    assert len(calls) == 1, "an intact cache must not be rebuilt"
    capsys.readouterr()
    why = damage(target)
    assert cache_problem(target) == why
    cached_build(target, make_builder(calls))
    assert len(calls) == 2 and cache_problem(target) is None
    assert capsys.readouterr().err == f"workbench: cached model at {target} is incomplete or corrupt ({why}); rebuilding\n"
    assert sorted(p.name for p in target.parent.iterdir()) == [".m-1.lock", "m-1"]


def test_interrupted_or_killed_build_leaves_nothing_trusted(small_checks, tmp_path):
    target = tmp_path / "models" / "m-1"

    def interrupted(out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_build(target, interrupted)
    assert sorted(p.name for p in target.parent.iterdir()) == [".m-1.lock"]
    # a build killed with SIGKILL leaves its temporary: the next build removes it and builds afresh
    killed = target.parent / ".m-1.abc123.tmp"
    killed.mkdir()
    (killed / "config.json").write_text("{}")
    calls = []
    cached_build(target, make_builder(calls))
    assert len(calls) == 1 and cache_problem(target) is None
    assert sorted(p.name for p in target.parent.iterdir()) == [".m-1.lock", "m-1"]


def test_gguf_cache_of_a_tiny_model_is_checked_and_rebuilt(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The GGUF path end to end, with the conversion replaced by copying the tiny model (the real one is
    the embedded model's 20-30 s dequantization): a truncated cached checkpoint is rebuilt and loads."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    conversions = []

    def convert(gguf, out, progress):
        conversions.append(gguf)
        for f in tiny_model_dir.iterdir():
            (out / f.name).write_bytes(f.read_bytes())

    monkeypatch.setattr(model_module, "convert_gguf", convert)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    first = load_model(str(gguf), device="cpu")
    (target,) = [p for p in (model_cache.cache_root() / "models").iterdir() if p.is_dir()]
    assert len(conversions) == 1 and cache_problem(target) is None
    weights = target / "model.safetensors"
    data = weights.read_bytes()
    size = len(data)
    weights.unlink()  # a new, truncated file: the first model still maps the old one
    weights.write_bytes(data[: size // 2])
    capsys.readouterr()
    second = load_model(str(gguf), device="cpu")
    assert len(conversions) == 2
    assert capsys.readouterr().err == (f"workbench: cached model at {target} is incomplete or corrupt "
                                       f"(model.safetensors has {size // 2:,} bytes, the manifest says {size:,}); rebuilding\n")
    first_weights = dict(first.model.named_parameters())
    assert all(p.equal(first_weights[n]) for n, p in second.model.named_parameters())


# ----- Ctrl-C during a headless prune -------------------------------------------------------------
# The child of the SIGINT test registers the method "slow-wanda" (Wanda, each linear's pruning waiting
# 0.5 s first) and prunes with it, so the signal sent once calibration shows on the progress line lands
# inside calibration on a machine of any speed (a fast one once finished the whole run before the signal
# arrived).
SLOW_CALIBRATION = """
import dataclasses, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job's child inherits SIGINT ignored
from workbench.methods import METHODS
wanda = METHODS.get("wanda")
def slow(*args, **kwargs):
    time.sleep(0.5)
    return wanda.prune(*args, **kwargs)
METHODS.add(dataclasses.replace(wanda, name="slow-wanda", prune=slow))
from workbench.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_during_calibration_exits_130_and_writes_nothing(tiny_model_dir, tmp_path):
    """A real SIGINT once calibration has started (seen on the progress line, which needs a terminal:
    stderr is a pty); each linear takes at least 0.5 s to prune (SLOW_CALIBRATION)."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CALIBRATION, "prune", "--model", str(tiny_model_dir), "--method", "slow-wanda",
         "--samples", "64", "--seqlen", "256", "--probes", "", "--save-session", str(out / "s.toml"), "--save-masks",
         "--export", str(out / "export")],
        stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 180
        while b"calibrating block" not in seen:
            assert proc.poll() is None, f"ended before calibration: {seen.decode(errors='replace')}"
            assert time.monotonic() < deadline, f"no calibration progress in 180 s: {seen.decode(errors='replace')}"
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 4096)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=120)
        while select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 130, text
    # the line clears the progress line it interrupts
    assert "\r\x1b[Kworkbench: cancelled; nothing was written" in text and "Traceback" not in text
    assert stdout == b""
    assert list(out.iterdir()) == [] and list(tmpdir.iterdir()) == []


def _prune_args(tiny_model_dir, out):
    return ["prune", "--model", str(tiny_model_dir), *TINY, "--probes", "", "--save-session", str(out / "s.toml"),
            "--save-masks", "--export", str(out / "export")]


def test_interrupt_during_export_writes_nothing(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def interrupted(self, directory, *args, **kwargs):
        (Path(directory) / "tokenizer.json").write_text("{")  # half-way through the export
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", interrupted)
    assert main(_prune_args(tiny_model_dir, tmp_path)) == 130
    assert capsys.readouterr().err.strip() == "workbench: cancelled; nothing was written"
    assert list(tmp_path.iterdir()) == []


def test_failed_session_write_removes_the_export(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import workbench.domain.session

    def failing(session, path):
        raise WorkbenchError(str(path), "cannot write: no space left on device; nothing was written")

    monkeypatch.setattr(workbench.domain.session, "save_session", failing)
    assert main(_prune_args(tiny_model_dir, tmp_path)) == 2
    assert "no space left on device" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_the_session_write_is_held_until_it_is_written(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import workbench.domain.session

    save = workbench.domain.session.save_session

    def interrupted(session, path):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs here, in the main thread
        save(session, path)

    monkeypatch.setattr(workbench.domain.session, "save_session", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    assert main([*_prune_args(tiny_model_dir, tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["session"] == str(tmp_path / "s.toml")
    assert "Ctrl-C came while the session was being written; every output was written in full" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "s.masks.safetensors", "s.toml"]
    assert signal.getsignal(signal.SIGINT) is handler
