"""The help screen: every key binding, grouped by where it applies."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from workbench.app.format import escape
from workbench.tui.widgets.block_pane import BlockPane
from workbench.tui.widgets.slider import Slider

INTRO = ("Each line is a transformer block: its target sparsity slider, then achieved sparsity, mean |W|, "
         "outlier ratio, activation norm and reconstruction error (bars and colour flag the blocks that stand "
         "out). Edits re-prune in the background; the header shows target vs achieved and probe results.")


def help_sections(commands, features) -> list[tuple[str, list[Binding]]]:
    """The help screen's sections: every command, the keys of a slider and of a block, each feature's own
    section (its screen's keys), then the command palette."""
    return [
        ("Anywhere", [command.binding() for command in commands]),
        ("On a slider", Slider.BINDINGS),
        ("On a block", BlockPane.BINDINGS),
        *(feature.help for feature in features if feature.help),
        ("Command palette", [Binding("ctrl+p", "", "Every command by name: methods, patterns, allocators, themes")]),
    ]


class HelpScreen(ModalScreen):
    """A scrollable list of bindings (up/down, page keys); escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "app.pop_screen", "Close help", id="help.close")]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; max-width: 100; height: 90%; border: round $primary; background: $surface; padding: 0 1;
    }
    HelpScreen .section { text-style: bold; color: $primary; margin-top: 1; }
    HelpScreen .binding { height: auto; }
    HelpScreen .keys { width: 20; color: $accent; text-align: right; padding-right: 2; }
    HelpScreen .what { width: 1fr; }
    """

    def __init__(self, sections: list[tuple[str, list[Binding]]]):
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(escape(INTRO))
            for title, bindings in self.sections:
                yield Static(escape(title), classes="section")
                for binding in bindings:
                    keys = ", ".join(self.app.get_key_display(Binding(key, "")) for key in binding.key.split(","))
                    with Horizontal(classes="binding"):
                        yield Static(escape(keys), classes="keys")
                        yield Static(escape(binding.tooltip or binding.description), classes="what")
            yield Static(escape("escape, q or ? closes this help"), classes="section")

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()
