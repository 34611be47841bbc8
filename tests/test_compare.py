"""Comparisons and sensitivity scans on the tiny model: the engine API, sessions, and the CLI (table, JSON,
--save round trip through replay --check, --plot, cancel)."""

import json
import re
import sys

import pytest

from tests.conftest import make_engine
from workbench.cli.compare import comparison_table
from workbench.cli.figures import error_bars
from workbench.cli.main import main
from workbench.domain.plan import CalibrationSpec, Plan
from workbench.domain.session import ComparisonFile, Session, load_replayable, load_session, save_comparison, save_session
from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.probes import ProbeResult, Units
from workbench.studies.compare import Comparison, Variant, VariantResult, grid, run_comparison
from workbench.studies.sensitivity import Sensitivity, scan

TINY = ["--samples", "4", "--seqlen", "32"]
VARIANTS = [Variant("uniform", Plan(sparsity=0.6)), Variant("owl", Plan(allocator="owl", sparsity=0.6))]


def _result(name: str, score: float) -> VariantResult:
    probe = ProbeResult("perplexity", score, "ppl", False, 2, 0.1, "quick", 0.01, 0.0, relative=True)
    return VariantResult(name, Plan(), [probe], [0.5], 0.5, 10, 0.1)


def test_best_follows_the_probe_direction():
    comparison = Comparison(probes=["perplexity"], results=[_result("a", 30.0), _result("b", 20.0)])
    assert comparison.best("perplexity") == "b"
    comparison.results[0].probes[0].higher_is_better = comparison.results[1].probes[0].higher_is_better = True
    assert comparison.best("perplexity") == "a" and comparison.best("facts") is None


def test_grid_names_variants():
    assert [v.name for v in grid(["wanda"], ["uniform", "owl"], 0.7)] == ["uniform", "owl"]
    variants = grid(["wanda", "magnitude"], ["uniform"], 0.7, "2:4")
    assert [v.name for v in variants] == ["wanda/uniform", "magnitude/uniform"]
    assert all(v.plan.pattern == "2:4" and v.plan.sparsity == 0.7 for v in variants)


def test_variants_are_evaluated_from_dense_one_after_another():
    engine = make_engine()
    comparison = run_comparison(engine, VARIANTS, ["perplexity"])
    assert [r.name for r in comparison.results] == ["uniform", "owl"]
    assert len(comparison.outlier_ratios) == 4 and comparison.dense[0].name == "perplexity"
    for variant, result in zip(VARIANTS, comparison.results):
        alone = make_engine()
        alone.prune(variant.plan)
        assert result.probes[0].score == alone.probe(["perplexity"])[0].score
        assert result.block_targets == pytest.approx(alone.block_targets(variant.plan))
        assert result.achieved == alone.state().achieved
    assert comparison.results[0].block_targets != comparison.results[1].block_targets
    assert engine.plan == VARIANTS[-1].plan
    uniform, owl = comparison.results
    assert uniform.prepare_seconds < owl.prepare_seconds  # OWL's dense statistics, computed before its prune


def test_a_cancelled_comparison_leaves_the_last_finished_variant():
    engine = make_engine()
    done = []
    cancel = lambda: len(done) == 1  # noqa: E731  (cancel as soon as the first variant finished)
    with pytest.raises(Cancelled):
        run_comparison(engine, VARIANTS, ["perplexity"], cancel=cancel, on_result=done.append)
    assert [r.name for r in done] == ["uniform"]
    alone = make_engine()
    alone.prune(VARIANTS[0].plan)
    assert engine.plan == VARIANTS[0].plan and engine.weights_digest() == alone.weights_digest()


def test_a_comparison_cancelled_inside_a_prune_leaves_a_consistent_engine():
    engine = make_engine()
    engine.prune(VARIANTS[0].plan)
    before = engine.weights_digest()
    seen = []
    cancel = lambda: any("[2/2] owl prune: calibrating block 2" in m for m in seen)  # noqa: E731

    with pytest.raises(Cancelled):
        run_comparison(engine, VARIANTS, ["perplexity"], progress=lambda m, f: seen.append(m), cancel=cancel)
    assert any("[2/2] owl prune: calibrating block 2" in m for m in seen)
    assert engine.weights_digest() == before and engine.plan == VARIANTS[0].plan


def test_variants_are_checked_before_anything_runs():
    engine = make_engine()
    with pytest.raises(WorkbenchError, match="two variants have this name"):
        run_comparison(engine, [VARIANTS[0], VARIANTS[0]], ["perplexity"])
    with pytest.raises(WorkbenchError, match="variant 'bad': sparsity"):
        run_comparison(engine, [Variant("bad", Plan(sparsity=1.5))], ["perplexity"])
    assert engine.plan is None and not engine.dense_probes


def test_sensitivity_raises_one_block_at_a_time_and_leaves_the_plan():
    engine = make_engine()
    plan = Plan(sparsity=0.5)
    engine.prune(plan)
    before = engine.weights_digest()
    result = scan(engine, plan, step=0.2, probe="perplexity", blocks=[0, 2])
    assert result.deltas[1] is None and result.deltas[3] is None
    assert engine.weights_digest() == before
    engine.apply(Plan(sparsity=0.5, block_overrides={2: 0.7}))
    assert result.deltas[2] == pytest.approx(engine.probe(["perplexity"])[0].score - result.base)
    with pytest.raises(WorkbenchError, match="--blocks"):
        scan(engine, plan, blocks=[9])


def test_sessions_keep_comparison_and_sensitivity(tmp_path):
    comparison = Comparison(probes=["perplexity"], dense=[_result("d", 10.0).probes[0]],
                            results=[_result("a", 30.0), _result("b", 20.0)], outlier_ratios=[0.01])
    comparison.results[1].prepare_seconds = 4.5
    sensitivity = Sensitivity("perplexity", 0.1, 12.0, [0.5, None, 2.0], 1.0)
    save_session(Session(sections={"comparison": comparison, "sensitivity": sensitivity}), tmp_path / "s.toml")
    loaded = load_session(tmp_path / "s.toml")
    assert loaded.sections == {"comparison": comparison, "sensitivity": sensitivity}


def test_cli_compare_table_json_save_replay_and_plot(tiny_model_dir, tmp_path, capsys):
    args = ["compare", "--model", str(tiny_model_dir), *TINY, "--allocators", "uniform,owl", "--sparsity", "0.6",
            "--probes", "perplexity,arithmetic,efficiency"]
    assert main([*args, "--save", str(tmp_path / "cmp"), "--plot", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "uniform" in out and "owl" in out and "95% paired bootstrap interval" in out
    assert re.search(r"perplexity +[\d.]+ +[\d.]+ [+-][\d.]+ \[[+-][\d.]+,[+-][\d.]+\]", out), out
    assert "no per-item data, so no interval (best by score alone): efficiency" in out
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["replay", str(tmp_path / "cmp" / "comparison.toml"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "DIFFERS" not in out and "as recorded:" in out and out.count("95% paired bootstrap interval") == 2
    assert "arithmetic   recorded" in out and "items 0 lost / 0 gained" in out  # the same machine: no item flips
    assert main(["replay", str(tmp_path / "cmp" / "owl.toml"), "--check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and [p["flips"] for p in report["probes"]] == [None, {"lost": 0, "gained": 0}, None]
    assert main([*args, "--json", "--plot", str(tmp_path / "cmp.svg"), "--save", str(tmp_path / "again")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in data["variants"]] == ["uniform", "owl"] and set(data["best"]) == {"perplexity", "arithmetic", "efficiency"}
    rows = data["intervals"]["rows"]
    assert set(rows["perplexity"]["deltas"]) == {"uniform", "owl"} and rows["efficiency"]["deltas"] == {"uniform": None, "owl": None}
    assert [(p["a"], p["b"]) for p in rows["perplexity"]["pairwise"]] == [("uniform", "owl")]
    assert set(rows["arithmetic"]["flips"]) == {"uniform", "owl"} and data["tied"]["perplexity"] == rows["perplexity"]["tied"]
    assert b"<svg" in (tmp_path / "cmp.svg").read_bytes()
    assert main(["replay", str(tmp_path / "again" / "comparison.toml"), "--json"]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert replayed["recorded"]["intervals"] == data["intervals"]  # recomputed from the saved units alone
    assert replayed["comparison"]["intervals"] == data["intervals"]  # the same machine replays exactly


def _exact(name: str, right: list[int]) -> ProbeResult:
    values = [float(x) for x in right]
    return ProbeResult(name, sum(values) / len(values), "exact match", True, len(values), 0.1, "quick", 0.1, 0.0,
                       units={"score": Units(values)})


def _exact_comparison() -> Comparison:
    """Three variants on 24 items: one like dense, one all right, one a single item better than dense."""
    base = [1, 0] * 12
    results = [VariantResult(name, Plan(), [_exact("arithmetic", right), _exact("facts", base)], [0.5], 0.5, 10, 0.1)
               for name, right in (("uniform", base), ("owl with a long name", [1] * 24), ("agent", [1, 1] + base[2:]))]
    return Comparison(probes=["arithmetic", "facts"], dense=[_exact("arithmetic", base), _exact("facts", base)], results=results)


def test_the_table_marks_best_only_outside_the_interval_and_wraps_at_the_width():
    comparison = _exact_comparison()
    table = comparison_table(comparison, columns=70)
    lines = table.splitlines()
    head = [i for i, line in enumerate(lines) if line.startswith("probe ")]
    assert len(head) == 3 and all(len(lines[i + k]) <= 70 for i in head for k in range(4))
    assert sum(line.count("*") for line in lines if line.startswith(("arithmetic", "facts"))) == 1
    assert "1.000 +0.500 [+0.292,+0.708]*" in table and "0.542 +0.042 [+0.000,+0.125] " in table
    assert "  facts        all" in table and "  arithmetic   uniform 0/0, owl with a long name 0/12, agent 0/1" in table
    assert comparison.row("arithmetic").best == "owl with a long name" and comparison.best("facts") == "uniform"
    assert len(comparison_table(comparison, columns=200).splitlines()[0]) > 70  # one group when it fits


def test_the_plot_draws_each_variants_interval_against_dense_around_its_score():
    comparison = _exact_comparison()
    below, above = error_bars(comparison, "arithmetic")
    row = comparison.row("arithmetic")
    assert below[0] == above[0] == 0.0  # the variant equal to dense: a zero-width interval
    for k, name in enumerate(["owl with a long name", "agent"]):
        delta = row.deltas[name]
        # scores, deltas and bounds are multiples of 1/24 in [-1, 1]: each of the few roundings is within eps
        assert abs(below[k + 1] + above[k + 1] - (delta.high - delta.low)) <= 4 * sys.float_info.epsilon
        assert abs(below[k + 1] - (delta.delta - delta.low)) <= 4 * sys.float_info.epsilon


def test_version_1_comparison_files_still_load(tmp_path):
    comparison = Comparison(probes=["perplexity"], dense=[_result("d", 10.0).probes[0]], results=[_result("a", 30.0), _result("b", 20.0)])
    path = tmp_path / "comparison.toml"
    save_comparison(path, ComparisonFile("tiny", "cpu", "float32", CalibrationSpec(), comparison))
    path.write_text(path.read_text().replace("version = 2", "version = 1"))
    loaded = load_replayable(path).comparison
    assert loaded == comparison and loaded.row("perplexity").deltas == {"a": None, "b": None}
    assert loaded.row("perplexity").best == "b"  # no units: best by score alone


def test_cli_compare_replay_check_fails_when_numbers_differ(tiny_model_dir, tmp_path, capsys):
    assert main(["compare", "--model", str(tiny_model_dir), *TINY, "--allocators", "uniform", "--probes", "perplexity",
                 "--save", str(tmp_path)]) == 0
    path = tmp_path / "comparison.toml"
    text = path.read_text()
    marker = '[[variants.probes]]\nname = "perplexity"\nscore = '
    start = text.index(marker) + len(marker)
    end = text.index("\n", start)
    path.write_text(text[:start] + repr(float(text[start:end]) * 2) + text[end:])
    capsys.readouterr()
    assert main(["replay", str(path), "--check"]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_replay_of_a_bad_comparison_file_is_one_line_naming_file_and_key(tmp_path, capsys):
    path = tmp_path / "comparison.toml"
    cases = {
        'version = 99\nkind = "comparison"\n': "version: unsupported comparison version 99 (this workbench reads 1, 2)",
        'version = 1\nkind = "comparison"\nvariant = []\n': "variant: unknown key",
        'version = 1\nkind = "comparison"\n[model\n': "invalid TOML",
    }
    for text, reason in cases.items():
        path.write_text(text)
        capsys.readouterr()
        assert main(["replay", str(path)]) == 2, text
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and reason in err, err


def test_cli_compare_refuses_a_bad_plot_name_before_loading(capsys):
    assert main(["compare", "--model", "no/such-model", "--plot", "x.gif"]) == 2
    assert "--plot x.gif: the file name must end in .png or .svg" in capsys.readouterr().err


def test_cli_sensitivity(tiny_model_dir, tmp_path, capsys):
    assert main(["sensitivity", "--model", str(tiny_model_dir), *TINY, "--sparsity", "0.5", "--step", "0.2",
                 "--save-session", str(tmp_path / "s.toml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["count"] == 4 and data["blocks"] == [0, 1, 2, 3] and len(data["deltas"]) == 4
    assert load_session(tmp_path / "s.toml").sections["sensitivity"].deltas == pytest.approx(data["deltas"])
    assert main(["sensitivity", "--session", str(tmp_path / "s.toml"), "--blocks", "1"]) == 0
    assert "    1 " in capsys.readouterr().out
