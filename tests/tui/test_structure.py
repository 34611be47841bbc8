"""Pilot tests of structured pruning in the app: the width keys, the drop toggle and the block scores, on
the tiny Llama (hidden 128, intermediate 320, 4 blocks)."""

from __future__ import annotations

from tests.tui.conftest import settle
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
        await pilot.press("down", "enter")  # the width score picker: the next score after ppm
        await settle(pilot)
        assert app.controller.plan.structure.width_score == "vow"
