"""A modal list to choose one of a few named options (method, pattern, allocator, theme)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from workbench.tui.screens.dialog import Dialog


class PickerScreen(Dialog[str | None]):
    """Pick from `choices` (value, description); up/down and enter, or escape to keep the current one.
    Dismisses with the chosen value or None."""

    DEFAULT_CSS = """
    PickerScreen > Vertical { max-height: 90%; }
    PickerScreen OptionList { height: auto; max-height: 16; border: none; }
    """

    def __init__(self, title: str, choices: list[tuple[str, str]], current: str | None):
        super().__init__()
        self.title_text = title
        self.choices = choices
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text)
            yield OptionList(*[Option(f"{'●' if value == self.current else ' '} {value:<12} {about}", id=value)
                               for value, about in self.choices])

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        values = [value for value, _ in self.choices]
        options.highlighted = values.index(self.current) if self.current in values else 0
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
