"""The small dialogs on their shared base: escape gives each one's "no answer", enter its checked value,
and a bad entry keeps the dialog open with the reason under it."""

from __future__ import annotations

from textual.app import App

from workbench.tui.screens.confirm import ConfirmScreen
from workbench.tui.screens.dialog import Dialog
from workbench.tui.screens.params import ParamsScreen
from workbench.tui.screens.path_prompt import PathPrompt
from workbench.tui.screens.picker import PickerScreen
from workbench.tui.screens.value_prompt import ValuePrompt


def _parse_eps(typed: dict[str, str]) -> float:
    value = float(typed["eps"])
    if not 0 < value < 1:
        raise ValueError("eps: must be between 0 and 1")
    return value


def _dialogs(tmp_path):
    return {
        "confirm": lambda: ConfirmScreen("Drop the edits?"),
        "params": lambda: ParamsScreen("LayerIF", [("eps", "0.3", "spread")], _parse_eps),
        "path": lambda: PathPrompt("Open a session", must_exist=True),
        "picker": lambda: PickerScreen("Method", [("wanda", "|W| x ||X||"), ("magnitude", "|W|")], "wanda"),
        "value": lambda: ValuePrompt("block 3", 0.5, 0.95),
    }


async def _answers(tmp_path, name: str, *keys: str):
    """What the dialog `name` dismisses with after `keys`, and the error it shows if it is still open."""
    answers = []

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(_dialogs(tmp_path)[name](), answers.append)

    app = Host()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, Dialog)
        await pilot.press(*keys)
        await pilot.pause()
        still_open = isinstance(app.screen, Dialog)
        return answers, str(app.screen.query_one("#error").render()) if still_open else None


async def test_escape_is_no_answer(tmp_path):
    for name in ("params", "path", "picker", "value"):
        answers, _ = await _answers(tmp_path, name, "escape")
        assert answers == [None], name
    answers, _ = await _answers(tmp_path, "confirm", "escape")
    assert answers == [False]


async def test_enter_gives_the_checked_value(tmp_path):
    existing = tmp_path / "s.toml"
    existing.write_text("")
    assert (await _answers(tmp_path, "confirm", "y"))[0] == [True]
    assert (await _answers(tmp_path, "params", "enter"))[0] == [0.3]
    assert (await _answers(tmp_path, "path", *str(existing), "enter"))[0] == [existing]
    assert (await _answers(tmp_path, "picker", "down", "enter"))[0] == ["magnitude"]
    assert (await _answers(tmp_path, "value", "ctrl+u", *"70", "enter"))[0] == [0.7]


async def test_bad_entry_keeps_the_dialog_with_the_reason(tmp_path):
    cases = {
        "params": (("ctrl+u", *"2", "enter"), "eps: must be between 0 and 1"),
        "path": ((*str(tmp_path / "missing.toml"), "enter"), "no such file"),
        "value": (("ctrl+u", *"99", "enter"), "at most 95 percent"),
    }
    for name, (keys, reason) in cases.items():
        answers, error = await _answers(tmp_path, name, *keys)
        assert answers == [] and reason in error, name
