"""The UI-free parts of the app: formatting, plan edits, undo/redo history, theme files, recovery."""

from __future__ import annotations

import os
from dataclasses import replace
from types import SimpleNamespace

import pytest

from workbench.agent.record import ACCEPTED, NO_ACTION, ROLLED_BACK, StepRecord
from workbench.app import edits
from workbench.engine.facade import Plan
from workbench.infra.errors import WorkbenchError
from workbench.probes import ProbeResult
from workbench.app.format import (
    CORE_COLUMNS,
    Cell,
    Scale,
    agent_columns,
    agent_run_line,
    agent_settings_line,
    agent_step_cells,
    cells_markup,
    columns_width,
    core_cells,
    heat_cells,
    influence_cells,
    level,
    params,
    parse_percent,
    pct,
    plan_line,
    probe_summary,
    short,
    variant_column,
)
from workbench.app.history import EditHistory
from workbench.app.recovery import Autosave, clear_recovery, describe_recovery
from workbench.app.themes import default_theme_name, load_themes, parse_theme, themes_dir
from workbench.domain.plan import plan_from_dict


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


def test_probe_summary_shows_kl_with_top1_and_flips():
    kl = ProbeResult("kl", 0.786, "nats", False, 2, 0.1, "quick", 0.066, 0.0, details={"top1": 0.543})
    assert probe_summary(kl, None) == Cell("KL 0.786 top1 54%")
    arith = ProbeResult("arithmetic", 0.25, "exact match", True, 4, 0.1, "quick", 0.75, 0.0,
                        details={"flips": {"lost": 2, "gained": 1}})
    dense = ProbeResult("arithmetic", 0.5, "exact match", True, 4, 0.1, "quick", 0.75, 0.0)
    assert probe_summary(arith, dense).text == "arith 0.250 (-0.25) -2/+1"


def test_variant_column_marks_the_best_and_waits_for_queued_variants():
    from workbench.studies.compare import Comparison, VariantResult

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


def test_variant_column_shows_intervals_and_marks_only_a_real_best():
    """With per-item units the cell carries the change's interval; ★ only where the intervals exclude
    zero, = for variants tied at the top."""
    from workbench.probes import Units
    from workbench.studies.compare import Comparison, VariantResult

    def facts(name: str, right: int) -> ProbeResult:
        values = [1.0] * right + [0.0] * (26 - right)
        return ProbeResult("facts", right / 26, "exact match", True, 26, 0.1, "quick", 3 / 26, 0.0,
                           units={"score": Units(values)})

    def measured(name: str, right: int) -> VariantResult:
        return VariantResult(name, Plan(allocator=name), [facts(name, right)], [0.5], 0.5, 1500, 2.0)

    probes = ["facts"]
    tied = Comparison(probes, dense=[facts("dense", 26)], results=[measured("owl", 13), measured("uniform", 12)])
    cells = [variant_column(Plan(allocator=r.name), r, probes, tied)[3].text for r in tied.results]
    assert cells[0].startswith("= 0.500 (-0.5)\n[") and cells[1].startswith("= 0.462 (-0.54)\n[")
    clear = Comparison(probes, dense=[facts("dense", 26)], results=[measured("owl", 24), measured("uniform", 2)])
    assert variant_column(Plan(allocator="owl"), clear.results[0], probes, clear)[3].text.startswith("★ 0.923")


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
    assert tuned.allocator_params == {"M": 3.0, "lambda": 0.1} and label == "owl M=3 λ=0.1"
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
    from workbench.app import recovery

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
    from workbench.app.format import probes_line, sparsity_line

    state = SimpleNamespace(achieved=0.5174, params_nonzero=51_300_000, params_total=106_200_000)
    for note in (None, "re-pruning", "not applied (p prunes)"):
        assert len(" ".join(c.text for c in sparsity_line(state, Plan(sparsity=0.5), note))) <= 78
    results = [ProbeResult(n, s, "", h, 1, 0.0, "quick", 0.01, 0.0)
               for n, s, h in (("arithmetic", 0.0208, True), ("brackets", 0.1667, True), ("efficiency", 81.1, False),
                               ("facts", 0.2, True), ("instructions", 0.25, True), ("perplexity", 20.31, False))]
    dense = {r.name: replace(r, score=r.score * 1.5) for r in results}
    text = " ".join(c.text for c in probes_line(results, dense, True))
    assert len(text) <= 2 * 78


def test_allocator_parameters_of_every_kind_are_shown_and_edited():
    agent = Plan(allocator="agent", allocator_params={"start": 0.4, "steps": [{"blocks": [1], "by": [0.025]}] * 12})
    defaults = {"policy": "builtin", "step": 0.025, "start": None, "steps": ()}
    assert plan_line("tiny", agent, None, False, defaults) == \
        "tiny · wanda · agent 12 steps policy=builtin start=0.4 step=0.025 · unstructured"
    assert plan_line("tiny", Plan(allocator="agent"), None, False, defaults).startswith("tiny · wanda · agent 0 steps policy")
    fields = dict((key, text) for key, text, _ in edits.param_fields("layerif", {"eps": 0.2}))
    assert fields["eps"] == "0.2" and fields["estimator"] == "datainf" and fields["train"] == "24"
    assert set(dict((k, t) for k, t, _ in edits.param_fields("agent", {}))) == {"policy", "step", "span", "max_steps",
                                                                             "rollback", "measure"}
    typed = edits.parse_allocator_params("layerif", {"eps": "0.2", "estimator": " identity "})
    assert typed == {"eps": 0.2, "estimator": "identity"}
    with pytest.raises(ValueError, match="estimator: unknown"):
        edits.parse_allocator_params("layerif", {"estimator": "nope"})
    tuned, label = edits.set_allocator_params(agent, {"step": 0.01})
    assert tuned.allocator_params["steps"] == agent.allocator_params["steps"] and label == "agent step=0.01"
    assert edits.searches("agent") and not edits.searches("owl")


def test_agent_settings_are_typed_in_percent_and_checked():
    form = edits.AgentForm("builtin", None, 0.025, 40, 0.1, "", "")
    texts = {key: text for key, text, _ in edits.agent_fields(form, 0.6)}
    assert texts == {"policy": "builtin", "target": "60", "step": "2.5", "max_steps": "40", "rollback": "10",
                     "measure": "kl", "url": "", "model": ""}
    assert edits.parse_agent_form(texts, 0.6) == form  # the plan's target is followed
    assert edits.parse_agent_form({**texts, "target": "70", "max_steps": "3"}, 0.6).target == pytest.approx(0.7)
    ppl = edits.parse_agent_form({**texts, "measure": "perplexity"}, 0.6)
    assert ppl.settings().measure == "perplexity" and agent_settings_line(ppl, 0.6).endswith("· measure perplexity")
    assert form.plan_for(Plan(sparsity=0.6, allocator="owl")).sparsity == 0.6
    assert form.settings().step == 0.025 and form.settings().llm.url == ""
    for bad, reason in (({"policy": "oracle"}, "policy: unknown"), ({"step": "0"}, "step: must be in"),
                        ({"measure": "ppl"}, "measure: unknown"),
                        ({"max_steps": "2.5"}, "max_steps: not a whole number"), ({"target": "x"}, "target: not a number"),
                        ({"policy": "llm"}, "url: the llm policy needs")):
        with pytest.raises(ValueError, match=reason):
            edits.parse_agent_form({**texts, **bad}, 0.6)
    llm = edits.parse_agent_form({**texts, "policy": "llm", "url": "http://127.0.0.1:9/v1", "model": "m"}, 0.6)
    assert llm.asks_llm and agent_settings_line(llm, 0.6) == \
        "Agent · llm · m · target 60.0% · step 2.5 pts · max 40 steps · rollback 10%"


def test_agent_step_rows_and_run_line():
    steps = [StepRecord(1, ACCEPTED, [3, 5], [0.025, 0.0125], 0.40625, score=31.25, change=0.012, seconds=0.5),
             StepRecord(2, ROLLED_BACK, [1], [0.025], 0.40625, score=40.0, change=0.28, seconds=0.25),
             StepRecord(3, NO_ACTION, [], [], 0.40625, reason="no valid reply")]
    assert [c.text for c in agent_step_cells(steps[0])] == ["1", "+1.25/2.5 on 3,5", "40.6%", "31.2", "+1.2%",
                                                            "accepted", "0.5s"]
    assert [c.tone for c in map(lambda r: agent_step_cells(r)[5], steps)] == ["success", "error", "dim"]
    assert [c.text for c in agent_step_cells(steps[2])][1:5] == ["-", "40.6%", "-", "-"]
    assert agent_run_line(None, False)[0].tone == "dim"
    run = SimpleNamespace(records=steps, done=False, stop_reason=None, final_score=None,
                          settings=SimpleNamespace(measure="perplexity"))
    texts = lambda stepping: " ".join(c.text for c in agent_run_line(run, stepping))  # noqa: E731
    assert texts(True) == "3 steps: 1 accepted, 1 rolled back · global 40.6% · running"
    assert texts(False).endswith("· paused (r resumes)")
    run.done, run.stop_reason, run.final_score = True, "target reached", 33.0
    assert texts(False).endswith("· stopped: target reached, ppl 33.0")
    run.settings.measure, run.final_score = "kl", 0.4125
    assert texts(False).endswith("· stopped: target reached, KL 0.412")
    assert agent_columns("kl")[3:5] == ("KL", "ΔKL") and agent_columns("perplexity")[3] == "ppl"


def test_influence_cells_fit_their_column():
    cells = influence_cells([0.01234, 154244.3, None, -2.5])
    assert [c.text for c in cells] == [" 0.012", " 2e+05", "     -", "-2.500"] and cells[2].tone == "dim"
    assert all(len(c.text) == 6 for c in cells)


def test_structure_edits_copy_the_structure_and_never_drop_every_block():
    plan = Plan()
    narrow, label = edits.set_width(plan, 2.4)
    assert narrow.structure.width_ratio == 2.4 and plan.structure.width_ratio is None and label == "global width 2.4x"
    own, label = edits.set_block_width(narrow, 1, 2.0)
    assert own.structure.width_overrides == {1: 2.0} and not narrow.structure.width_overrides
    assert label == "block 1 width 2x"
    back, label = edits.reset_block_width(own, 1)
    assert not back.structure.width_overrides and own.structure.width_overrides == {1: 2.0}
    dropped, label = edits.toggle_drop(own, 3, 4)
    assert dropped.structure.drop_blocks == [3] and not own.structure.drop_blocks and label == "drop block 3"
    assert edits.toggle_drop(dropped, 3, 4)[0].structure.drop_blocks == [] and dropped.structure.drop_blocks == [3]
    two = edits.toggle_drop(edits.toggle_drop(dropped, 0, 4)[0], 1, 4)[0]
    with pytest.raises(ValueError, match="cannot drop every block"):
        edits.toggle_drop(two, 2, 4)
    scored, label = edits.choose_width_score(two, "vow")
    assert scored.structure.width_score == "vow" and two.structure.width_score == "ppm" and label == "width score vow"
    assert edits.set_width(scored, None)[1] == "global full width"
    assert {name for name, _ in edits.width_score_options()} >= {"ppm", "vow", "pon", "data"}


def test_drops_by_rule_replace_every_drop_and_never_drop_every_block():
    plan = edits.toggle_drop(Plan(), 0, 4)[0]
    chosen, label = edits.set_drops(plan, [3, 1], 4, "bi")
    assert chosen.structure.drop_blocks == [1, 3] and plan.structure.drop_blocks == [0] and label == "drop 1,3 by bi"
    cleared, label = edits.set_drops(chosen, [], 4, "none")
    assert cleared.structure.drop_blocks == [] and chosen.structure.drop_blocks == [1, 3]
    assert label == "keep every block"
    with pytest.raises(ValueError, match="cannot drop every block: at least one of the 4 must run"):
        edits.set_drops(plan, [0, 1, 2, 3], 4, "bi")
    with pytest.raises(ValueError, match="no block 4"):
        edits.set_drops(plan, [4], 4, "angular")
    with pytest.raises(ValueError, match="chosen twice"):
        edits.set_drops(plan, [1, 1], 4, "bi")
    edits.check_drop_count(0, 4)
    edits.check_drop_count(3, 4)
    for count, problem in ((-1, "0 or more"), (4, "at most 3"), (9, "at least one must run")):
        with pytest.raises(ValueError, match=problem):
            edits.check_drop_count(count, 4)
    assert edits.parse_drop_count({"N": " 2 "}) == 2
    with pytest.raises(ValueError, match="N: not a whole number"):
        edits.parse_drop_count({"N": "two"})
    assert [name for name, _ in edits.DROP_RULES] == ["bi", "angular", "none"]


def test_width_divisor_edits():
    assert [name for name, _ in edits.width_divisor_options()] == ["none", "32", "64", "128", "256"]
    plan = Plan()
    rounded, label = edits.choose_width_divisor(plan, 64)
    assert rounded.structure.width_divisor == 64 and plan.structure.width_divisor is None
    assert label == "width divisor 64"
    assert edits.choose_width_divisor(rounded, None)[0].structure.width_divisor is None
    assert edits.choose_width_divisor(rounded, None)[1] == "no width divisor"
    with pytest.raises(ValueError, match="must be one of 32, 64, 128, 256"):
        edits.choose_width_divisor(plan, 48)


def test_width_steps_land_on_the_grid_and_stop_at_full_width():
    assert edits.step_ratio(None, 2.5, -1) == 2.4 and edits.step_ratio(None, 2.5, 1) is None
    assert edits.step_ratio(2.45, 2.5, -1) == 2.4
    assert edits.step_ratio(2.43, 2.5, 1) is None  # 2.5 is full width
    assert edits.step_ratio(2.43, 3.0, 1) == 2.5 and edits.step_ratio(0.1, 2.5, -3) == 0.1  # one step stays


def test_structure_cells_and_plan_line():
    from workbench.domain.plan import Structure
    from workbench.app.format import block_widths, depth_cells, global_width_cell, structure_text, width_cells

    blocks = [SimpleNamespace(index=i, width=w, intermediate=320, dropped=d, block_influence=bi, angular_distance=ad)
              for i, (w, d, bi, ad) in enumerate([(None, False, 0.25, 0.5), (295, False, 0.125, None),
                                                  (None, True, None, None)])]
    structure = Structure(width_overrides={1: 2.3}, drop_blocks=[2])
    assert [(c.text.strip(), c.tone) for c in width_cells(blocks, structure, 128)] == \
        [("2.5x  320", "dim"), ("2.3x  295", ""), ("dropped", "dim")]
    assert global_width_cell(Structure(width_ratio=2.4)).text.strip() == "2.4x ppm"
    assert global_width_cell(structure).text.strip() == "full ppm"
    assert [c.text.split() for c in depth_cells(blocks)] == [["0.250", "0.500"], ["0.125", "-"], ["-", "-"]]
    assert block_widths(blocks, 128) == [2.5, 295 / 128, 0.0]
    assert structure_text(Structure(width_ratio=2.4, width_overrides={1: 2.3}, drop_blocks=[2, 3])) == \
        "width 2.4x ppm, 1 block width, drop 2,3"
    line = plan_line("tiny", Plan(structure=Structure(drop_blocks=[1])), None, False)
    assert line == "tiny · wanda · uniform · unstructured · drop 1" and structure_text(Structure()) == ""


def test_linear_labels_name_experts_by_number_and_kind():
    from types import SimpleNamespace

    from workbench.app.format import linear_label

    def linear(name, kind, expert=None):
        return SimpleNamespace(name=name, kind=kind, expert=expert)

    assert linear_label(linear("layers.0.mlp.gate_proj", "gate")) == "gate"
    assert linear_label(linear("layers.0.mlp.experts.12.down_proj", "down", 12)) == "12d"
    assert linear_label(linear("layers.0.mlp.shared_expert.up_proj", "up")) == "su"


def test_toggle_expert_drop_adds_and_removes_one_expert_and_leaves_the_old_plan_alone():
    from workbench.app.edits import toggle_expert_drop
    from workbench.domain.plan import Plan, Structure

    plan = Plan(structure=Structure(drop_blocks=[2], drop_experts={0: [3]}))
    dropped, label = toggle_expert_drop(plan, 0, 1)
    assert dropped.structure.drop_experts == {0: [1, 3]} and label == "drop expert 1 of block 0"
    assert plan.structure.drop_experts == {0: [3]} and dropped.structure.drop_blocks == [2]
    kept, label = toggle_expert_drop(dropped, 0, 3)
    assert kept.structure.drop_experts == {0: [1]} and label == "keep expert 3 of block 0"
    assert toggle_expert_drop(kept, 0, 1)[0].structure.drop_experts == {}
