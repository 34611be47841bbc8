"""Replay across machines: mask fingerprints, the agreement `replay --check` accepts, exact mask files,
and replays under simulated other machines (other SIMD level, BLAS code path, thread count)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import TINY_CALIBRATION, make_engine
from workbench.domain.plan import Plan
from workbench.domain.replaycheck import MIN_MASK_AGREEMENT, ReplayReport
from workbench.engine.masks import SAMPLE_SIZE, compare_fingerprints, fingerprint, load_mask_file, sample_positions
from workbench.infra.errors import WorkbenchError

TINY = ["--samples", str(TINY_CALIBRATION["samples"]), "--seqlen", str(TINY_CALIBRATION["seqlen"])]
# Other machines, simulated: ATen's generic kernels, MKL's AVX2 path (the one it takes on AMD CPUs), one thread.
MACHINES = {
    "aten-generic": {"ATEN_CPU_CAPABILITY": "default"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "one-thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
}


def run(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_sample_positions_are_distinct_and_fixed():
    for numel in (7, 1000, 884_736):
        pos = sample_positions(numel)
        assert len(set(pos.tolist())) == min(SAMPLE_SIZE, numel) and pos.min() >= 0 and pos.max() < numel
    # the positions are part of the session format: recorded fingerprints stay comparable
    assert sample_positions(884_736)[:4].tolist() == [294912, 522673, 750434, 93459]


def test_agreement_estimate_tracks_flipped_decisions():
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(256, 1024, generator=g) > 0.6
    recorded = {"a": fingerprint(keep)}
    same = compare_fingerprints(recorded, {"a": fingerprint(keep.clone())}, {"a": keep.numel()})
    assert same.exact and same.identical == 1 and same.agreement == 1.0
    flipped = keep.clone().flatten()
    flipped[torch.randperm(flipped.numel(), generator=g)[: flipped.numel() // 10]] ^= True
    other = compare_fingerprints(recorded, {"a": fingerprint(flipped.view_as(keep))}, {"a": keep.numel()})
    # 512 sampled decisions of which 10% flipped: the estimate's standard error is 1.3 points; allow 5.
    assert not other.exact and other.identical == 0 and abs(other.agreement - 0.9) < 0.066


@pytest.mark.parametrize("method, sparsity", [("wanda", 0.6), ("sparsegpt", 0.5), ("magnitude", 0.7)])
def test_mask_file_restores_weights_bit_for_bit(tmp_path, method, sparsity):
    saved = make_engine(hessian=True)
    saved.prune(Plan(method=method, sparsity=sparsity))
    path = tmp_path / "s.masks.safetensors"
    sha = saved.save_masks(path)
    other = make_engine(hessian=True)
    other.prune(Plan(method=method, sparsity=sparsity - 0.2))  # another state to overwrite
    assert other.weights_digest() != saved.weights_digest()
    assert other.restore_masks(load_mask_file(path, sha)) > 0
    assert other.weights_digest() == saved.weights_digest()
    assert other.state().achieved == pytest.approx(saved.state().achieved, abs=1e-12)
    # SparseGPT updates the kept weights, so its file carries them; the others store masks only
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert any(k.endswith(".values") for k in f.keys()) == (method == "sparsegpt")


def test_bad_mask_files_are_refused_and_nothing_changes(tmp_path):
    engine = make_engine()
    engine.prune(Plan(sparsity=0.5))
    path = tmp_path / "s.masks.safetensors"
    sha = engine.save_masks(path)
    with pytest.raises(WorkbenchError, match="SHA-256 differs"):
        load_mask_file(path, "0" * 64)
    stored = load_mask_file(path, sha)
    before = engine.weights_digest()
    stored.pop("layers.3.mlp.down_proj")
    with pytest.raises(WorkbenchError, match="masks do not fit this model"):
        engine.restore_masks(stored)
    other = make_engine()
    other.prune(Plan(sparsity=0.7))
    digest = other.weights_digest()
    broken = load_mask_file(path, sha)
    broken["layers.3.mlp.down_proj"].keep = broken["layers.3.mlp.down_proj"].keep[:, :-1]
    with pytest.raises(WorkbenchError, match="has shape"):
        other.restore_masks(broken)
    assert other.weights_digest() == digest and engine.weights_digest() == before
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WorkbenchError, match="cannot read mask file"):
        load_mask_file(tmp_path / "junk.safetensors")


def test_check_refuses_low_agreement_and_kept_count_change():
    keep = torch.rand(64, 512, generator=torch.Generator().manual_seed(1)) > 0.5
    rec = {"a": fingerprint(keep)}
    flipped = keep.clone()
    flipped[:, : int(512 * (1 - MIN_MASK_AGREEMENT)) + 8] ^= True
    low = compare_fingerprints(rec, {"a": fingerprint(flipped)}, {"a": keep.numel()})
    assert not ReplayReport(low, False, [], "").ok
    fewer = keep.clone()
    fewer[0, fewer[0].nonzero()[0, 0]] = False  # one weight less
    one = compare_fingerprints(rec, {"a": fingerprint(fewer)}, {"a": keep.numel()})
    assert one.agreement > MIN_MASK_AGREEMENT and not ReplayReport(one, False, [], "").ok
    assert ReplayReport(compare_fingerprints(rec, rec, {"a": keep.numel()}), False, [], "").ok


@pytest.fixture(scope="module")
def saved_session(tiny_model_dir, tmp_path_factory):
    """A tiny-model session saved with its exact masks (OWL, so the allocation is data-driven too)."""
    path = tmp_path_factory.mktemp("machines") / "s.toml"
    result = run("prune", "--model", str(tiny_model_dir), "--method", "wanda", "--allocator", "owl", "--sparsity",
                 "0.7", *TINY, "--probes", "perplexity", "--save-session", str(path), "--save-masks", "--json")
    assert result.returncode == 0, result.stderr
    return path, json.loads(result.stdout)


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_replay_on_another_machine_is_exact_with_mask_file_and_checks_without(saved_session, machine):
    path, summary = saved_session
    exact = run("replay", str(path), "--check", "--json", env=MACHINES[machine])
    assert exact.returncode == 0, exact.stdout + exact.stderr
    report = json.loads(exact.stdout)
    assert report["restored_from_mask_file"] and report["masks"]["exact"]
    assert report["weights_sha256"] == summary["weights_sha256"]  # bit-identical weights
    recomputed = run("replay", str(path), "--check", "--json", "--recompute", env=MACHINES[machine])
    assert recomputed.returncode == 0, recomputed.stdout + recomputed.stderr
    again = json.loads(recomputed.stdout)
    assert not again["restored_from_mask_file"] and again["masks"]["agreement"] >= MIN_MASK_AGREEMENT


def test_replay_refuses_a_tampered_mask_file(saved_session, tmp_path):
    path, _ = saved_session
    copy = tmp_path / path.name
    copy.write_text(path.read_text())
    masks = path.with_name(f"{path.stem}.masks.safetensors")
    data = bytearray(masks.read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / masks.name).write_bytes(bytes(data))
    result = run("replay", str(copy), "--check")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("mask file does not match the session (SHA-256 differs)")


def test_save_masks_needs_a_session(tiny_model_dir):
    result = run("prune", "--model", str(tiny_model_dir), *TINY, "--save-masks")
    assert result.returncode == 2 and "--save-masks: needs --save-session" in result.stderr
