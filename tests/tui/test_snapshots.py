"""Snapshot tests of the main screens at 80x24 and 120x40 (tiny seeded model, so the numbers are fixed).
Regenerate with `pytest tests/tui/test_snapshots.py --snapshot-update` after a deliberate change."""

from __future__ import annotations

from tests.tui.conftest import settle


async def _ready(pilot) -> None:
    await settle(pilot)


def test_main_screen_80x24(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=_ready)


def test_main_screen_120x40(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=(120, 40), run_before=_ready)


def test_expanded_block_with_edits_80x24(snap_compare, make_app):
    async def edit(pilot) -> None:
        await settle(pilot)
        await pilot.press("down", "right", "right", "right", "right", "right", "enter", "down", "down", "end")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=edit)


def test_help_screen_80x24(snap_compare, make_app):
    async def help_(pilot) -> None:
        await settle(pilot)
        await pilot.press("question_mark")

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=help_)


def test_plots_allocation_80x24(snap_compare, make_app):
    async def plots(pilot) -> None:
        await settle(pilot)
        await pilot.press("v")
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=plots)


def test_light_theme_owl_120x40(snap_compare, make_app):
    async def owl(pilot) -> None:
        await settle(pilot)
        await pilot.press("a", "up", "enter")
        await settle(pilot)

    assert snap_compare(make_app(theme="light"), terminal_size=(120, 40), run_before=owl)
