"""Pilot tests of structured pruning in the app: the width keys, the drop toggle and the block scores, on
the tiny Llama (hidden 128, intermediate 320, 4 blocks)."""

from __future__ import annotations

import asyncio
import time

from textual.widgets import Input

from tests.tui.conftest import settle
from workbench.tui.screens.params import ParamsScreen
from workbench.tui.screens.picker import PickerScreen
from workbench.tui.widgets.block_pane import BlockPane
from workbench.tui.widgets.stat_row import StatRow


def cell(app, block: int, column: str) -> str:
    """The text of a block's optional column as shown."""
    return str(app.query(BlockPane)[block].row.query_one(f".{column}").render())


def gate_rows(app, position: int) -> int:
    """The neurons of the gate projection of the `position`-th running block of the real model."""
    return app.engine.loaded.model.model.layers[position].mlp.gate_proj.weight.shape[0]


async def test_width_keys_shrink_the_focused_block_and_the_global_row_every_block(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert not app.screen.has_class("-width") and gate_rows(app, 1) == 320
        await pilot.press("down", "left_square_bracket", "left_square_bracket")
        await settle(pilot)
        assert app.controller.plan.structure.width_overrides == {1: 2.3}
        assert app.screen.has_class("-width") and cell(app, 1, "width").strip() == "2.3x  295"
        assert cell(app, 0, "width").strip() == "2.5x  320"
        assert app.controller.state.blocks[1].width == 295 and gate_rows(app, 1) == 295 and gate_rows(app, 0) == 320
        await pilot.press("backslash")
        await settle(pilot)
        assert gate_rows(app, 1) == 320 and not app.controller.plan.structure.width_overrides
        await pilot.press("g", "left_square_bracket")
        await settle(pilot)
        assert app.controller.plan.structure.width_ratio == 2.4
        assert [gate_rows(app, i) for i in range(4)] == [308] * 4  # OptiPFair truncates the neurons pruned
        assert "2.4x ppm" in str(app.query_one(".global-row", StatRow).query_one(".width").render())
        await pilot.press("right_square_bracket")
        await settle(pilot)
        assert app.controller.plan.structure.width_ratio is None and gate_rows(app, 0) == 320


async def test_drop_toggle_removes_the_block_and_undo_brings_it_back(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "down", "x")
        await settle(pilot)
        assert app.controller.plan.structure.drop_blocks == [2]
        assert len(app.engine.loaded.model.model.layers) == 3 and app.controller.state.blocks[2].dropped
        assert app.query(BlockPane)[2].has_class("-dropped") and cell(app, 2, "width").strip() == "dropped"
        await pilot.press("u")
        await settle(pilot)
        assert len(app.engine.loaded.model.model.layers) == 4 and not app.query(BlockPane)[2].has_class("-dropped")
        await pilot.press("x", "up", "x", "up", "x")  # blocks 2, 1 and 0 dropped, then block 3 is refused
        await pilot.press("down", "down", "down", "x")
        await settle(pilot)
        assert app.controller.plan.structure.drop_blocks == [0, 1, 2]
        assert any("cannot drop every block" in n for n in app.notices)
        assert len(app.engine.loaded.model.model.layers) == 1


async def test_block_scores_command_shows_the_depth_columns(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert not app.screen.has_class("-depth")
        await pilot.press("b")
        await settle(pilot)
        blocks = app.controller.state.blocks
        assert all(b.block_influence is not None for b in blocks) and app.screen.has_class("-depth")
        first = cell(app, 0, "depth").split()
        assert len(first) == 2 and float(first[0]) == round(blocks[0].block_influence, 3)
        assert cell(app, 3, "depth").split()[1] == "-" or blocks[3].angular_distance is not None
        await pilot.press("w")
        await pilot.press("down", "down", "enter")  # the width score picker: two below ppm (random, vow)
        await settle(pilot)
        assert app.controller.plan.structure.width_score == "vow"


async def until(pilot, done, timeout: float = 60.0) -> None:
    """Wait (bounded) until `done()`, then until the app is idle (a worker's message may still be queued
    when the worker itself has finished)."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            raise AssertionError("the app did not get there in time")
        await asyncio.sleep(0.05)
    await settle(pilot)


async def drop_by(pilot, moves: tuple[str, ...], count: str | None = None) -> None:
    """X, then the rule `moves` away from the one highlighted, then (unless none) N typed over the default."""
    await pilot.press("X")
    await pilot.pause()
    assert isinstance(pilot.app.screen, PickerScreen)
    await pilot.press(*moves, "enter")
    await pilot.pause()
    if count is not None:
        assert isinstance(pilot.app.screen, ParamsScreen)
        pilot.app.screen.query_one(Input).value = count
        await pilot.press("enter")
        await pilot.pause()


async def test_drop_by_block_influence_drops_the_lowest_and_undo_keeps_every_block(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await drop_by(pilot, ("up", "up"), "1")  # from none (nothing dropped) up to bi
        await until(pilot, lambda: app.controller.plan.structure.drop_blocks)
        influence = app.engine.depth_scores().block_influence()
        lowest = min(range(len(influence)), key=influence.__getitem__)
        assert app.controller.plan.structure.drop_blocks == [lowest] == app.engine.choose_drops(1, "bi")
        assert len(app.engine.loaded.model.model.layers) == 3 and app.query(BlockPane)[lowest].has_class("-dropped")
        assert app.controller.history.entries[-1].label == f"drop {lowest} by bi"
        await pilot.press("u")
        await settle(pilot)
        assert app.controller.plan.structure.drop_blocks == [] and len(app.engine.loaded.model.model.layers) == 4


async def test_drop_by_none_clears_every_drop(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "x", "down", "x")
        await settle(pilot)
        assert app.controller.plan.structure.drop_blocks == [1, 2]
        await drop_by(pilot, ("down", "down"))  # from bi (blocks are dropped) down to none
        await settle(pilot)
        assert app.controller.plan.structure.drop_blocks == [] and len(app.engine.loaded.model.model.layers) == 4
        assert app.controller.history.entries[-1].label == "keep every block"


async def test_drop_by_refuses_dropping_every_block(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "x")
        await settle(pilot)
        before, entries = app.controller.plan, len(app.controller.history.entries)
        await drop_by(pilot, (), "4")  # bi is highlighted (a block is dropped)
        await settle(pilot)
        assert any("cannot drop 4 of 4 blocks" in n for n in app.notices)
        assert app.controller.plan == before and len(app.controller.history.entries) == entries
        assert app.controller.plan.structure.drop_blocks == [1] and not isinstance(app.screen, ParamsScreen)


async def test_width_divisor_picker_rounds_the_kept_neurons_and_undo_clears_it(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "left_square_bracket", "left_square_bracket")
        await settle(pilot)
        assert app.controller.state.blocks[1].width == 295
        await pilot.press("W")
        await pilot.pause()
        assert isinstance(app.screen, PickerScreen)
        await pilot.press("down", "enter")  # from none to 32
        await settle(pilot)
        assert app.controller.plan.structure.width_divisor == 32
        kept = app.controller.state.blocks[1].width
        assert kept == gate_rows(app, 1) == 288 and kept % 32 == 0
        assert app.controller.history.entries[-1].label == "width divisor 32"
        await pilot.press("u")
        await settle(pilot)
        assert app.controller.plan.structure.width_divisor is None and gate_rows(app, 1) == 295


async def test_help_lists_the_structure_commands(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        text = " ".join(str(w.render()) for w in app.screen.query(".what"))
        assert "Drop N blocks by a rule" in text and "Pick the width divisor" in text
