"""The headless CLI on a local tiny model directory: prune, save, replay --check, export, stats, errors."""

import json
import subprocess
import sys

import pytest

from workbench.cli import main as cli
from workbench.cli.main import main

TINY = ["--samples", "4", "--seqlen", "32"]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True, timeout=600)


def test_prune_save_replay_check_export(tiny_model_dir, tmp_path, capsys):
    session = tmp_path / "s.toml"
    out = tmp_path / "export"
    assert main(["prune", "--model", str(tiny_model_dir), "--method", "wanda", "--allocator", "owl", "--sparsity", "0.6",
                 "--block-sparsity", "1=0.3", *TINY, "--save-session", str(session), "--export", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["probes"][0]["name"] == "perplexity"
    assert summary["probes"][0]["pruned"] != summary["probes"][0]["dense"]
    assert main(["replay", str(session), "--check", "--json"]) == 0
    replay = json.loads(capsys.readouterr().out)
    assert replay["ok"] and replay["achieved"] == pytest.approx(summary["achieved"])
    assert replay["probes"][0]["now"] == pytest.approx(summary["probes"][0]["pruned"], abs=1e-6)

    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(out)
    zeros = sum((m.weight == 0).sum().item() for n, m in exported.named_modules() if n.endswith("_proj"))
    total = sum(m.weight.numel() for n, m in exported.named_modules() if n.endswith("_proj"))
    assert zeros / total == pytest.approx(summary["achieved"], abs=1e-6)


def test_replay_check_fails_when_numbers_differ(tiny_model_dir, tmp_path, capsys):
    session = tmp_path / "s.toml"
    assert main(["prune", "--model", str(tiny_model_dir), "--sparsity", "0.5", *TINY, "--save-session", str(session)]) == 0
    text = session.read_text()
    import re

    recorded = float(re.search(r"\[\[probes\]\]\nname = \"perplexity\"\nscore = ([0-9.e+-]+)", text).group(1))
    session.write_text(text.replace(repr(recorded), repr(recorded * 1.5), 1))
    capsys.readouterr()
    assert main(["replay", str(session), "--check"]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_stats_json(tiny_model_dir, capsys):
    assert main(["stats", "--model", str(tiny_model_dir), *TINY, "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert len(state["blocks"]) == 4 and state["calibrated"]
    assert all(b["outlier_ratio"] is not None and b["achieved"] == 0 for b in state["blocks"])


@pytest.mark.parametrize("args, message", [
    (["prune", "--model", "no/such-model-offline", "--sparsity", "0.5"], "model 'no/such-model-offline': cannot load"),
    (["prune", "--model", "./missing.gguf"], "model './missing.gguf': GGUF file not found"),
    (["prune", "--model", "not a model"], "model 'not a model': not 'embedded'"),
    (["prune", "--sparsity", "1.5"], "sparsity: sparsity must be in [0, 1), got 1.5"),
    (["prune", "--allocator-param", "M"], "--allocator-param: expected KEY=VALUE"),
    (["prune", "--block-sparsity", "99=0.5"], "overrides.blocks.99: no such block"),
    (["replay", "/nonexistent/s.toml"], "/nonexistent/s.toml: session file not found"),
    (["prune", "--device", "cuda:7"], "--device: cuda:7 asked for but"),
    (["bench", "--only", "warp"], "--only: unknown stage(s) warp"),
])
def test_errors_are_one_line_exit_2(args, message, tiny_model_dir):
    if "--model" not in args and args[0] == "prune":
        args = [*args, "--model", str(tiny_model_dir), *TINY]
    result = run(*args, "--progress", "none")  # on a loaded machine a load can pass the 5 s that starts progress lines
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("workbench: error: ") and message in lines[0]


@pytest.mark.parametrize("error, message", [
    (MemoryError(), "out of memory (CPU)"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory on the device"),
])
def test_out_of_memory_is_one_line_exit_2(error, message, monkeypatch, capsys):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "cmd_stats", fail)
    assert main(["stats"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"workbench: error: {message}: try fewer calibration samples")


def test_other_runtime_errors_propagate(monkeypatch):
    def fail(args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(cli, "cmd_stats", fail)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["stats"])


def test_invalid_session_exit_2_and_nothing_written(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[model]\nspec = 'embedded'\n[plan]\nmethod = 'wanda'\nsparsity = 2\n")
    result = run("replay", str(bad))
    assert result.returncode == 2 and result.stderr.strip() == f"workbench: error: {bad}: plan.sparsity: sparsity must be in [0, 1), got 2"
    assert [p.name for p in tmp_path.iterdir()] == ["bad.toml"]


def test_app_starts_without_importing_torch():
    """The first frame must not wait for torch (seconds on a small machine): `workbench tui` parses
    its options and imports the app without it; the model loads in the app's worker."""
    code = ("import sys\nfrom workbench.cli import main as cli\nimport workbench.tui.app\n"
            "try:\n    cli.main(['tui', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: workbench tui" in result.stdout
