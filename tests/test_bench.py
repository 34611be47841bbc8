"""`workbench bench` runs every stage and reports real measurements (tiny model; the embedded first
load in a child process)."""

import json
import subprocess
import sys

import pytest

from workbench.cli.bench import EDITS, STAGES, _edits
from workbench.domain.plan import Plan

TINY = ["--samples", "4", "--seqlen", "32"]


def bench(*args):
    """The JSON report; the exit code is 1 exactly when a stage misses its target."""
    result = subprocess.run([sys.executable, "-m", "workbench.cli", "bench", *args, "--json"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert result.returncode == (1 if any(row["ok"] is False for row in report["stages"]) else 0)
    return report


def test_every_stage_is_measured_on_a_local_model(tiny_model_dir):
    report = bench("--model", str(tiny_model_dir), *TINY)
    stages = {row["stage"]: row for row in report["stages"]}
    assert set(stages) == set(STAGES) - {"load-first"}  # the first load is measured on the embedded model
    forward = stages["forward"]["seconds"]
    for name, row in stages.items():
        assert row["seconds"] > 0, name
        if name not in ("load-cached", "forward"):
            assert row["ratio"] == pytest.approx(row["seconds"] / forward), name
    assert stages["probe-suite"]["seconds"] > stages["perplexity"]["seconds"]  # the suite runs, not a cached result
    assert report["meta"]["calibration_tokens"] == 4 * 32
    assert report["meta"]["params"] > 0 and report["meta"]["random_weights"] is False
    assert report["meta"]["efficiency"]["tokens_per_second"] > 0
    assert "x (wanda + suite) + dense suite =" in stages["compare"]["target"]
    assert stages["reprune-linear"]["target"] == "<= 0.05 s, median of 5 edits"
    meta = report["meta"]
    for names, budget in ((("wanda", "wanda-one-pass", "sparsegpt", "magnitude"), meta["memory_budget_mib"]),
                          (("probe-dense", "perplexity", "kl", "probe-suite", "efficiency", "sensitivity", "compare", "reasoning",
                            "self-calibration"), meta["probe_memory_budget_mib"])):
        for name in names:
            assert stages[name]["target"].endswith(f"<= {budget:.0f} MiB"), name
            assert stages[name]["ok"] is not None, name
    for name, row in stages.items():
        assert row["start_mib"] <= row["peak_mib"], name  # resident after settling, then the stage's peak
        if name != "load-cached":
            assert row["start_mib"] > 0, name  # the model is resident once loaded


def test_reprune_edits_go_back_and_forth_from_cached_statistics(engine):
    """The re-prune stages time EDITS edits, alternately to the edited plan and back, each incremental."""
    base = Plan(method="wanda", sparsity=0.5)
    engine.prune(base)
    down = engine.linears[0][-1].name
    edited = Plan(method="wanda", sparsity=0.5, linear_overrides={down: 0.75})
    calls = []
    apply = engine.apply
    engine.apply = lambda plan: calls.append((plan, apply(plan).linears_pruned))
    seconds = _edits(engine, edited, base)
    assert len(seconds) == EDITS and all(s > 0 for s in seconds)
    assert calls == [(edited if i % 2 == 0 else base, 1) for i in range(EDITS)]  # one linear each time


def test_probe_suite_alone_times_the_pruned_model(tiny_model_dir):
    stages = bench("--model", str(tiny_model_dir), *TINY, "--only", "probe-suite")["stages"]
    assert [row["stage"] for row in stages] == ["load-cached", "forward", "probe-suite"]
    assert stages[-1]["seconds"] > 0.01


@pytest.mark.embedded
def test_first_load_runs_in_a_child_with_an_empty_cache():
    stages = bench("--only", "load-first", "--samples", "2", "--seqlen", "32")["stages"]
    first = stages[0]
    assert first["stage"] == "load-first" and first["seconds"] > 1
    assert first["peak_mib"] > 200  # the child's own peak: it dequantizes the 135M model
