"""Pilot tests: keys in, engine numbers out. The app runs on the tiny random Llama (4 blocks)."""

from __future__ import annotations

import threading

import pytest
from textual import events

from tests.tui.conftest import settle, tiny_factory
from workbench.app.edits import BlockKey, GlobalKey, LinearKey
from workbench.infra.errors import Cancelled
from workbench.tui.screens.confirm import ConfirmScreen
from workbench.tui.screens.help import HelpScreen
from workbench.features.plots.feature import PlotsFeature
from workbench.features.plots.screen import PlotsScreen
from workbench.tui.screens.picker import PickerScreen
from workbench.tui.widgets.block_pane import BlockPane
from workbench.tui.widgets.slider import Slider


async def test_slider_changes_block_achieved_sparsity_and_undo_redo(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.controller.state.blocks[1].achieved == pytest.approx(0.5, abs=0.01)
        assert app.focused.key == BlockKey(0)
        await pilot.press("down", "right", "right", "right", "shift+right")
        assert app.focused.key == BlockKey(1)
        assert app.focused.value == pytest.approx(0.58)
        await settle(pilot)
        assert app.controller.plan.block_overrides == {1: pytest.approx(0.58)}
        assert app.controller.state.blocks[1].achieved == pytest.approx(0.58, abs=0.01)
        assert app.controller.state.blocks[0].achieved == pytest.approx(0.5, abs=0.01)
        assert [e.label for e in app.controller.history.entries] == ["start", "block 1 58.0%"]
        await pilot.pause(1.1)
        await pilot.press("pageup")
        await settle(pilot)
        assert app.controller.state.blocks[1].achieved == pytest.approx(0.53, abs=0.01)
        await pilot.press("u")
        await settle(pilot)
        assert app.controller.state.blocks[1].achieved == pytest.approx(0.58, abs=0.01)
        await pilot.press("u", "u")
        await settle(pilot)
        assert app.controller.plan.block_overrides == {}
        assert app.controller.state.blocks[1].achieved == pytest.approx(0.5, abs=0.01)
        assert "nothing to undo" in app.notices
        await pilot.press("ctrl+y")
        await settle(pilot)
        assert app.controller.plan.block_overrides == {1: pytest.approx(0.58)}
        assert len(app.controller.history.entries) == 3
        await pilot.press("right", "left")
        await settle(pilot)
        assert app.controller.history.position == 1 and len(app.controller.history.entries) == 2


async def test_linear_slider_and_typed_value(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "down", "enter")
        pane = app.query_one("#block-2", BlockPane)
        assert pane.expanded
        await pilot.pause()
        await pilot.press("down")
        assert app.focused.key == LinearKey("layers.2.self_attn.q_proj")
        await pilot.press("e")
        await pilot.press(*"70.5", "enter")
        await settle(pilot)
        linear = app.controller.state.blocks[2].linears[0]
        assert linear.target == pytest.approx(0.705)
        assert linear.achieved == pytest.approx(0.705, abs=0.01)
        assert app.controller.state.blocks[2].achieved > 0.5
        assert app.controller.state.blocks[3].achieved == pytest.approx(0.5, abs=0.01)
        await pilot.press("enter")
        assert not pane.expanded
        assert app.focused.key == BlockKey(2)
        await pilot.press("backspace")
        await settle(pilot)
        assert app.controller.plan.linear_overrides == {}
        assert app.controller.state.blocks[2].achieved == pytest.approx(0.5, abs=0.01)


async def test_probe_run_shows_results(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        assert [p.name for p in app.controller.probes] == ["perplexity"]
        assert "perplexity" in app.controller.dense_probes
        line = str(app.query_one("#probes-line").render())
        assert "ppl" in line and "(" in line
        assert app.controller.history.current.probes["perplexity"] == app.controller.probes[0].score


async def test_pickers_allocator_resets_overrides_and_pattern_locks_sliders(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("right", "right")
        await settle(pilot)
        assert app.controller.plan.block_overrides
        await pilot.press("a")
        assert isinstance(app.screen, PickerScreen)
        await pilot.press("up", "enter")  # uniform -> owl (the list is sorted: owl, uniform)
        await settle(pilot)
        assert app.controller.plan.allocator == "owl" and app.controller.plan.block_overrides == {}
        targets = [b.target for b in app.controller.state.blocks]
        assert max(targets) - min(targets) > 0.01
        assert app.controller.state.achieved == pytest.approx(0.5, abs=0.01)
        await pilot.press("o")
        await pilot.press("3", "enter")
        await settle(pilot)
        assert app.controller.plan.allocator_params["M"] == 3.0
        await pilot.press("n", "down", "enter")
        await settle(pilot)
        assert app.controller.plan.pattern == "2:4"
        assert all(s.locked for s in app.query(Slider))
        assert all(b.achieved == pytest.approx(0.5) for b in app.controller.state.blocks)
        await pilot.press("right")
        assert any("pattern 2:4" in n for n in app.notices)
        assert app.controller.plan.pattern == "2:4"
        await pilot.press("ctrl+p", *"method: magnitude")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(pilot)
        assert app.controller.plan.method == "magnitude" and app.controller.state.blocks[0].linears[0].method == "magnitude"
        await pilot.press("m", "down", "enter")
        await settle(pilot)
        assert app.controller.plan.method == "sparsegpt"
        assert all(b.recon_error is not None for b in app.controller.state.blocks)
        assert "-" not in str(app.query_one("#block-0 .stats").render()).split()[-2]


async def test_invalid_session_file_shows_error_and_app_keeps_running(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[model]\nspec = "tiny"\n[plan]\nmethod = "nosuch"\nsparsity = 0.5\n')
    app = make_app(session=bad)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert any("nosuch" in n and "bad.toml" in n for n in app.notices)
        assert app.engine is not None and app.controller.session_path is None
        await pilot.press("ctrl+o")
        await pilot.press(*"missing.toml", "enter")
        assert "no such file" in str(app.screen.query_one("#error").render())
        await pilot.press("escape")
        broken = tmp_path / "broken.toml"
        broken.write_text("version = 1\n[model\n")
        await pilot.press("ctrl+o", *"broken.toml", "enter")
        await settle(pilot)
        assert any("invalid TOML" in n for n in app.notices)
        await pilot.press("right")
        await settle(pilot)
        assert app.controller.state.blocks[0].achieved == pytest.approx(0.51, abs=0.01)


async def test_worker_error_becomes_a_notification(make_app):
    def broken(**_):
        raise RuntimeError("disk on fire")

    app = make_app(engine_factory=broken)
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            if app.notices:
                break
        assert any("disk on fire" in n for n in app.notices)
        assert app.is_running
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)


async def test_autosave_recovery_is_offered_and_restores(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "down", "right", "right", "right")
        await settle(pilot)
        await pilot.pause(0.2)
        achieved = [b.achieved for b in app.controller.state.blocks]
    assert (tmp_path / "recovery.toml").exists()

    again = make_app()
    async with again.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(again.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert again.controller.plan.block_overrides == {2: pytest.approx(0.53)}
        assert [b.achieved for b in again.controller.state.blocks] == achieved
        assert again.controller.dirty and again.controller.session_path is None
        assert [e.label for e in again.controller.history.entries][-1] == "block 2 53.0%"
        await pilot.press("q")
    assert (tmp_path / "recovery.toml").exists()


async def test_quit_without_edits_removes_recovery_and_help_lists_bindings(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = " ".join(str(w.render()) for w in app.screen.query(".what"))
        for words in ("Undo", "Save the session", "Run the quick probes", "-5 points", "Type a value"):
            assert words in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("T")
        await pilot.press("down", "enter")
        assert app.theme == "light"
        await pilot.press("q")
    assert not (tmp_path / "recovery.toml").exists()
    assert app.return_code == 0


async def test_layout_fits_80x24(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await pilot.pause()
        for widget in app.screen.query("*"):
            if widget.display and widget.region.width:
                assert widget.region.right <= 80, widget
        header = [str(w.render()) for w in app.query("WorkbenchHeader Static")]
        assert all(len(line) <= 78 for line in header)


async def test_save_writes_toml_that_replays_to_the_numbers_shown(make_app, tiny_model_dir, tmp_path, monkeypatch,
                                                                   capsys):
    from workbench.cli import main as cli
    from workbench.engine.facade import CalibrationSpec
    from workbench.domain.session import load_session, replay_engine
    from workbench.tui.app import load_engine

    monkeypatch.chdir(tmp_path)
    app = make_app(model=str(tiny_model_dir), engine_factory=load_engine,
                   calibration=CalibrationSpec(samples=4, seqlen=32))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "right", "right", "right", "enter", "down", "down", "down", "e", *"65", "enter")
        await pilot.press("T", "down", "enter")
        await pilot.press("t")
        await settle(pilot)
        await pilot.press("ctrl+s")
        await pilot.press(*"run.toml", "enter")
        await settle(pilot)
        await pilot.pause(0.2)
        shown = app.controller.state
        assert app.controller.session_path == tmp_path / "run.toml" and not app.controller.dirty
        assert "run.toml" in str(app.query_one("#plan-line").render())
    session = load_session(tmp_path / "run.toml")
    assert session.theme == "light"
    assert session.plan.block_overrides == {1: pytest.approx(0.53)}
    assert session.plan.linear_overrides == {"layers.1.self_attn.v_proj": pytest.approx(0.65)}
    assert [p.name for p in session.probes] == ["perplexity"]
    assert [h["label"] for h in session.history][-2:] == ["block 1 53.0%", "layers.1.self_attn.v_proj 65.0%"]
    replayed = replay_engine(session).engine.state()
    assert replayed.achieved == shown.achieved
    for a, b in zip(replayed.blocks, shown.blocks):
        assert [x.achieved for x in a.linears] == [x.achieved for x in b.linears]
        assert a.outlier_ratio == pytest.approx(b.outlier_ratio)
    capsys.readouterr()
    assert cli.main(["replay", str(tmp_path / "run.toml"), "--check", "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out


async def test_mouse_click_and_drag_move_a_slider(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        slider = app.query_one("#block-3 Slider", Slider)
        bar = slider.content_size.width - 7
        await pilot.click(slider, offset=(0, 0))
        assert slider.value == 0.0 and app.focused is slider
        await pilot.mouse_down(slider, offset=(bar // 4, 0))
        await pilot.hover(slider, offset=(bar // 2, 0))
        await pilot.mouse_up(slider, offset=(bar // 2, 0))
        expected = round((bar // 2) / (bar - 1) * 0.99, 2)
        assert slider.value == pytest.approx(expected)
        await settle(pilot)
        assert app.controller.plan.block_overrides == {3: pytest.approx(expected)}
        assert app.controller.state.blocks[3].achieved == pytest.approx(expected, abs=0.01)
        await pilot.click("#block-1 .row-label")
        assert app.query_one("#block-1", BlockPane).expanded


async def test_edits_during_a_full_prune_wait_for_it_then_apply(make_app):
    gate = threading.Event()

    def gated_engine(**_):
        engine = tiny_factory()
        full_prune = engine.prune

        def prune(plan, progress=None, cancel=None):
            if engine.plan is not None:  # the first prune (at start) runs at once, later ones wait for the gate
                while not gate.wait(0.02):
                    if cancel is not None and cancel():
                        raise Cancelled()
            return full_prune(plan, progress, cancel)

        engine.prune = prune
        return engine

    app = make_app(engine_factory=gated_engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("p", "right", "right")
        await pilot.pause(0.6)
        assert "calibrate" in app.running_groups and "prune" not in app.running_groups
        assert "re-pruning" in str(app.query_one("#sparsity-line").render())
        gate.set()
        await settle(pilot)
        assert app.controller.plan.block_overrides == {0: pytest.approx(0.52)}
        assert app.controller.state.blocks[0].achieved == pytest.approx(0.52, abs=0.01)
        assert app.engine.calibrated_with.block_overrides == {}
        gate.clear()
        await pilot.press("p")
        await pilot.pause(0.2)
        await pilot.press("escape")
        await settle(pilot)
        assert "pruning cancelled" in app.notices
        assert app.controller.state.blocks[0].achieved == pytest.approx(0.52, abs=0.01)


async def test_fast_key_repeat_moves_one_slider_per_key(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("g")
        for _ in range(4):  # all queued before any is handled, as with key repeat over SSH
            app.post_message(events.Key("down", None))
        await pilot.pause(0.2)
        assert app.focused.key == BlockKey(3)
        for _ in range(3):
            app.post_message(events.Key("right", None))
        await settle(pilot)
        assert app.controller.plan.block_overrides == {3: pytest.approx(0.53)}


async def test_app_keys_are_disabled_over_dialogs(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("m")
        assert isinstance(app.screen, PickerScreen)
        await pilot.press("g", "a", "p", "t", "v", "u")
        assert isinstance(app.screen, PickerScreen) and len(app.screen_stack) == 2
        assert not app.running_groups
        await pilot.press("escape")
        await pilot.press("g")
        assert app.focused.key == GlobalKey()


async def test_plots_is_a_feature_with_its_command_help_and_screen(make_app):
    """v opens the Plots screen (editing keys are off there), v closes it; the help lists its keys."""
    app = make_app()
    assert isinstance(app.features["plots"], PlotsFeature)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("v")
        await pilot.pause()
        assert isinstance(app.screen, PlotsScreen)
        assert app.check_action("feature", ("compare",)) is False and app.check_action("save", ())
        await pilot.press("v")
        await pilot.pause()
        assert not isinstance(app.screen, PlotsScreen)
        await pilot.press("question_mark")
        await pilot.pause()
        assert "Plots screen (v)" in [str(w.render()) for w in app.screen.query(".section")]


async def test_an_expert_model_lists_experts_as_a_group_that_opens_into_one_row_each(make_app):
    app = make_app(engine_factory=moe_factory("qwen2_moe"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "enter")
        await pilot.pause()
        pane = app.query_one("#block-1", BlockPane)
        labels = [row.label_text.strip() for row in pane.query(".linear-row")]
        assert labels == ["q", "k", "v", "o", "sg", "su", "sd", "E8"]  # the routed experts as one group row
        await pilot.press(*["down"] * 8, "enter")  # onto the group row, and open it
        await settle(pilot)
        rows = list(pane.query(".expert-row"))
        assert len(rows) == 8 and rows[0].label_text.startswith(" 0")
        tokens = app.controller.state.blocks[1].expert_tokens
        busiest = tokens.index(max(tokens))
        assert rows[busiest].label_text.strip().endswith("█")  # the usage bar of the busiest expert is full
        await pilot.press("down", "down", "x")  # expert 1: drop it
        await settle(pilot)
        assert app.controller.plan.structure.drop_experts == {1: [1]}
        assert app.controller.state.blocks[1].dropped_experts == [1] and pane.query(".expert-row")[1].has_class("-dropped")
        await pilot.press("x")
        await settle(pilot)
        assert app.controller.plan.structure.drop_experts == {}
        await pilot.press("e", *"70", "enter")  # a manual target for expert 1 sets its three linears
        await settle(pilot)
        assert app.controller.plan.linear_overrides == {"layers.1.mlp.experts.1": pytest.approx(0.7)}
        assert app.controller.state.blocks[1].experts[1].achieved == pytest.approx(0.7, abs=0.02)
        await pilot.press("up", "up", "enter")  # the group row again: close it
        await settle(pilot)
        assert not pane.query(".expert-row")


async def test_a_large_expert_group_builds_its_rows_a_page_at_a_time(make_app):
    """Only a screenful of expert rows is built when the group opens; moving down builds the next ones."""
    app = make_app(engine_factory=moe_factory("qwen3_moe", experts=40, layers=2))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "enter")
        await pilot.pause()
        pane = app.query_one("#block-1", BlockPane)
        group = len(pane.query(".linear-row")) - 1
        await pilot.press(*["down"] * (group + 1), "enter")
        await settle(pilot)
        assert len(pane.query(".expert-row")) == BlockPane.EXPERT_PAGE
        await pilot.press(*["down"] * BlockPane.EXPERT_PAGE)  # onto the last row built
        await settle(pilot)
        rows = list(pane.query(".expert-row"))
        assert [r.key.name.rsplit(".", 1)[-1] for r in rows] == [str(e) for e in range(40)]  # every expert, in order


def moe_factory(family: str, **shape):
    """An engine factory for the app: a tiny random mixture of experts of `family` (and `shape`)."""
    from tests.tiny import tiny_moe
    from workbench.domain.plan import CalibrationSpec
    from workbench.engine.facade import Engine

    def build(**_):
        model, tokenizer = tiny_moe(family, **shape)
        return Engine.from_model(model, tokenizer, CalibrationSpec(samples=4, seqlen=32), spec="tiny-moe")

    return build
