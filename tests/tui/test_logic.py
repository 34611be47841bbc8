"""The UI-free parts of the app: formatting, plan edits, undo/redo history, theme files, recovery."""

from __future__ import annotations

import os
from dataclasses import replace
from types import SimpleNamespace

import pytest

from workbench.engine import Plan
from workbench.errors import WorkbenchError
from workbench.probes import ProbeResult
from workbench.tui import edits
from workbench.tui.format import (
    CORE_COLUMNS,
    Cell,
    Scale,
    cells_markup,
    columns_width,
    core_cells,
    heat_cells,
    level,
    params,
    parse_percent,
    pct,
    plan_line,
    probe_summary,
    short,
    variant_column,
)
from workbench.plan import plan_from_dict
from workbench.tui.history import EditHistory
from workbench.tui.recovery import Autosave, clear_recovery, describe_recovery
from workbench.tui.themes import default_theme_name, load_themes, parse_theme, themes_dir


def test_numbers_fit_their_columns():
    assert pct(0.5) == "50.0%" and pct(None) == "-"
    assert [short(v) for v in (0.718, 12.34, 512.0, 0.00005, 0, None, 123456.0)] == \
        ["0.718", "12.3", "512", "5e-05", "0", "-", "1e+05"]
    assert params(134_515_008) == "134.5M" and params(172_032) == "172.0K" and params(12) == "12"
    assert level(None, 1) == " " and level(1, 1) == "█" and level(0, 1) == "▁" and level(3, 0) == "▁"


def test_core_cells_flag_outlier_heavy_and_badly_reconstructed_rows():
    rows = [SimpleNamespace(achieved=0.5, w_mean_abs=0.0159, outlier_ratio=r, act_norm=0.7, recon_error=e)
            for r, e in ((0.001, 0.01), (0.001, 0.01), (0.001, 0.01), (0.02, 0.2))]
    scale = Scale.of(rows)
    plain, heavy = core_cells(rows[0], scale), core_cells(rows[3], scale)
    assert [c.tone for c in plain] == ["", "", "", "", ""]
    assert heavy[2].tone == "warning" and heavy[2].text.endswith("█")
    assert heavy[4].tone == "error"
    width = columns_width(CORE_COLUMNS)
    assert len(" ".join(c.text for c in heavy)) == width
    missing = core_cells(SimpleNamespace(achieved=0.0, w_mean_abs=0.01, outlier_ratio=None, act_norm=None,
                                         recon_error=None), scale)
    assert len(" ".join(c.text for c in missing)) == width and missing[4].tone == "dim"


def test_markup_escapes_brackets():
    assert cells_markup([Cell("a[b]"), Cell("x", "error")]) == "a\\[b] [$error]x[/]"


def test_parse_percent():
    assert parse_percent(" 62.5% ") == 0.625
    assert parse_percent("0") == 0.0
    for bad in ("abc", "-1", "100"):
        with pytest.raises(ValueError):
            parse_percent(bad)


def test_probe_summary_marks_worse_than_dense():
    def result(score, higher=False):
        return ProbeResult("perplexity", score, "ppl", higher, 2, 0.0, "quick", 0.05, 0.0)

    assert probe_summary(result(20.0), result(18.0)) == Cell("ppl 20.0 (+2)", "error")
    assert probe_summary(result(18.01), result(18.0)).tone == ""
    assert probe_summary(result(0.3, True), result(0.5, True)) == Cell("ppl 0.300 (-0.2)", "error")
    assert probe_summary(result(512.34), None) == Cell("ppl 512")


def test_variant_column_marks_the_best_and_waits_for_queued_variants():
    from workbench.compare import Comparison, VariantResult

    dense = ProbeResult("perplexity", 18.0, "ppl", False, 2, 0.0, "quick", 0.05, 0.0, relative=True)
    probes = ["perplexity"]

    def measured(name: str, score: float) -> VariantResult:
        return VariantResult(name, Plan(allocator=name), [replace(dense, score=score)], [0.5], 0.5, 1500, 2.0)

    comparison = Comparison(probes, dense=[dense], results=[measured("owl", 18.5), measured("uniform", 24.0)])
    best = variant_column(Plan(allocator="owl"), comparison.results[0], probes, comparison)
    assert [c.text for c in best] == ["wanda", "owl", "50.0%", "★ 18.5 (+0.5)", "50.0%", "1.5K", "2.0s"]
    assert best[3].tone == "success"  # within the tolerance of dense
    assert variant_column(Plan(allocator="uniform"), comparison.results[1], probes, comparison)[3] == Cell("24.0 (+6)", "error")
    queued = variant_column(Plan(block_overrides={1: 0.6}), None, probes, comparison)
    assert [c.text for c in queued] == ["wanda", "uniform*", "50.0%", "…", "…", "…", "…"]


def test_heat_cells_grade_the_cost_of_sparsity():
    cells = heat_cells([0.1, 6.0, None, 12.0, -1.0], higher_is_better=False)
    assert [c.tone for c in cells] == ["success", "warning", "dim", "error", "success"]
    assert cells[3].text == "█ +12.0" and cells[2].text == "·" and cells[4].text.startswith("▁ -1")
    assert [c.tone for c in heat_cells([-0.3, 0.0], higher_is_better=True)] == ["error", "success"]  # accuracy fell


def test_plan_line_shows_allocator_parameters_and_session():
    plan = Plan(allocator="owl", allocator_params={"M": 3.0}, pattern="2:4")
    assert plan_line("tiny", plan, "run.toml", True, {"M": 5.0, "lambda": 0.08}) == \
        "tiny · wanda · owl M=3 λ=0.08 · 2:4 · run.toml*"
    assert plan_line("tiny", Plan(), None, False) == "tiny · wanda · uniform · unstructured"


def test_edits_never_modify_the_old_plan():
    plan = Plan(block_overrides={1: 0.6}, linear_overrides={"layers.1.mlp.up_proj": 0.7, "layers.2.mlp.up_proj": 0.4})
    new, label = edits.set_block(plan, 1, 0.55)
    assert new.block_overrides == {1: 0.55} and new.linear_overrides == {"layers.2.mlp.up_proj": 0.4}
    assert plan.block_overrides == {1: 0.6} and len(plan.linear_overrides) == 2
    assert label == "block 1 55.0%"
    assert edits.set_linear(plan, "layers.3.mlp.down_proj", 0.8)[0].linear_overrides["layers.3.mlp.down_proj"] == 0.8
    assert edits.reset_block(plan, 1)[0].block_overrides == {}
    assert edits.reset_linear(plan, "layers.2.mlp.up_proj")[0].linear_overrides == {"layers.1.mlp.up_proj": 0.7}
    assert edits.set_global(plan, 0.6)[0].sparsity == 0.6
    patterned, _ = edits.choose_pattern(plan, "2:4")
    assert patterned.pattern == "2:4" and not patterned.block_overrides and not patterned.linear_overrides
    assert edits.choose_pattern(patterned, None)[0].pattern is None
    owl, _ = edits.choose_allocator(plan, "owl")
    assert owl.allocator == "owl" and not owl.block_overrides and not owl.linear_overrides
    tuned, label = edits.set_allocator_params(owl, {"M": 3.0, "lambda": 0.1})
    assert tuned.allocator_params == {"M": 3.0, "lambda": 0.1} and label == "owl M=3, lambda=0.1"
    assert edits.choose_method(tuned, "sparsegpt")[0].method == "sparsegpt"


def test_allocator_parameters_are_checked():
    assert edits.parse_allocator_params("owl", {"M": "3", "lambda": "0.1"}) == {"M": 3.0, "lambda": 0.1}
    for bad, reason in (({"M": "0"}, "M: must be > 0"), ({"lambda": "1"}, "lambda: must be in"),
                        ({"M": "x"}, "M: not a number"), ({"K": "1"}, "K")):
        with pytest.raises(ValueError, match=reason):
            edits.parse_allocator_params("owl", bad)


def test_history_undo_redo_and_round_trip():
    history = EditHistory(Plan())
    assert history.undo() is None
    history.push("block 0 60.0%", edits.set_block(Plan(), 0, 0.6)[0])
    history.push("global 70.0%", edits.set_global(history.current.plan, 0.7)[0])
    history.record_probes({"perplexity": 30.0})
    assert history.undo().label == "block 0 60.0%"
    history.record_probes({"perplexity": 20.0})
    records = history.to_records()
    assert records[-1]["undone"] is True and "undone" not in records[1]
    restored = EditHistory.from_records(records, history.current.plan)
    assert restored.position == 1 and restored.current.plan == history.current.plan
    assert restored.redo().plan.sparsity == 0.7
    assert restored.probe_series() == ([0, 1, 2], {"perplexity": [None, 20.0, 30.0]})
    history.push("global 55.0%", edits.set_global(history.current.plan, 0.55)[0])
    assert not history.can_redo() and len(history.entries) == 3
    assert plan_from_dict(records[1]["plan"]) == edits.set_block(Plan(), 0, 0.6)[0]


def test_quick_edits_of_one_control_merge():
    history = EditHistory(Plan())
    history.push("block 0 51.0%", edits.set_block(Plan(), 0, 0.51)[0], ("block", 0), now=10.0)
    history.push("block 0 52.0%", edits.set_block(Plan(), 0, 0.52)[0], ("block", 0), now=10.5)
    assert [e.label for e in history.entries] == ["start", "block 0 52.0%"]
    history.push("block 0 53.0%", edits.set_block(Plan(), 0, 0.53)[0], ("block", 0), now=12.0)
    history.push("block 1 53.0%", edits.set_block(Plan(), 1, 0.53)[0], ("block", 1), now=12.1)
    assert len(history.entries) == 4
    history.push("block 1 50.0%", history.entries[2].plan, ("block", 1), now=12.2)
    assert [e.label for e in history.entries] == ["start", "block 0 52.0%", "block 0 53.0%"]


def test_history_ignores_foreign_tables():
    restored = EditHistory.from_records([{"note": "written by hand"}], Plan(sparsity=0.3))
    assert len(restored.entries) == 1 and restored.current.plan.sparsity == 0.3


def test_shipped_themes_and_theme_errors(tmp_path, monkeypatch):
    specs, errors = load_themes()
    assert errors == [] and {"dark", "light", "mono"} <= {s.name for s in specs}
    assert themes_dir().name == "themes" and (themes_dir().parent / "workbench").is_dir()
    (tmp_path / "ok.toml").write_text('dark = false\n[colors]\nprimary = "#123456"\n')
    (tmp_path / "bad.toml").write_text('[colors]\nprimary = "blue-ish"\n')
    (tmp_path / "odd.toml").write_text('[colors]\nprimary = "#000000"\nsparkle = "#ffffff"\n')
    specs, errors = load_themes(tmp_path)
    assert [s.name for s in specs] == ["ok"] and not specs[0].dark
    assert len(errors) == 2 and any("colors.primary" in e for e in errors) and any("colors.sparkle" in e for e in errors)
    with pytest.raises(WorkbenchError, match="invalid TOML"):
        parse_theme("[colors", tmp_path / "x.toml")
    monkeypatch.setenv("NO_COLOR", "1")
    assert default_theme_name() == "mono"
    monkeypatch.delenv("NO_COLOR")
    assert default_theme_name() == "dark"


def test_recovery_description(tmp_path):
    path = tmp_path / "recovery.toml"
    assert describe_recovery(path) is None
    path.write_text("x")
    now = os.stat(path).st_mtime
    assert describe_recovery(path, now + 10) == "autosaved moments ago"
    assert describe_recovery(path, now + 600) == "autosaved 10 minutes ago"
    assert describe_recovery(path, now + 5 * 3600) == "autosaved 5 hours ago"
    assert describe_recovery(path, now + 3 * 86400) == "autosaved 3 days ago"
    clear_recovery(path)
    clear_recovery(path)
    assert not path.exists()


def test_autosave_writes_only_the_newest_and_reports_a_failing_streak_once(tmp_path, monkeypatch):
    from workbench.tui import recovery

    written = []
    monkeypatch.setattr(recovery, "write_recovery", lambda session, path: written.append(session))
    autosave = Autosave(tmp_path / "recovery.toml")
    old, new = autosave.ticket(), autosave.ticket()
    assert autosave.write("old", old) is None and autosave.write("new", new) is None and written == ["new"]

    def full(session, path):
        raise WorkbenchError(str(path), "no space left on device")

    monkeypatch.setattr(recovery, "write_recovery", full)
    assert "no space" in str(autosave.write("a", autosave.ticket()))
    assert autosave.write("b", autosave.ticket()) is None  # the same streak: reported once
    (tmp_path / "recovery.toml").write_text("x")
    queued = autosave.ticket()
    autosave.clear()
    assert autosave.write("c", queued) is None and not (tmp_path / "recovery.toml").exists()


def test_header_lines_fit_80_columns():
    from workbench.tui.format import probes_line, sparsity_line

    state = SimpleNamespace(achieved=0.5174, params_nonzero=51_300_000, params_total=106_200_000)
    for note in (None, "re-pruning", "not applied (p prunes)"):
        assert len(" ".join(c.text for c in sparsity_line(state, Plan(sparsity=0.5), note))) <= 78
    results = [ProbeResult(n, s, "", h, 1, 0.0, "quick", 0.01, 0.0)
               for n, s, h in (("arithmetic", 0.0208, True), ("brackets", 0.1667, True), ("efficiency", 81.1, False),
                               ("facts", 0.2, True), ("instructions", 0.25, True), ("perplexity", 20.31, False))]
    dense = {r.name: replace(r, score=r.score * 1.5) for r in results}
    text = " ".join(c.text for c in probes_line(results, dense, True))
    assert len(text) <= 2 * 78
