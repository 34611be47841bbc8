"""The app's commands in one table: each is a key binding (with an id) and, when it has a palette name,
an entry of the command palette. The UI features (`workbench.tui.feature`) add theirs between `COMMANDS`
and `CLOSING` (`command_table`)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Command:
    """One app command. `action` is a Textual action string; `description` is the footer label and
    `tooltip` the longer text of the help screen; `palette` names it in the command palette, with `about`;
    `where` it is bound: on the app, or on the blocks screen (its structural edits)."""

    id: str
    keys: str
    action: str
    description: str
    tooltip: str = ""
    show: bool = True
    palette: str = ""
    about: str = ""
    where: str = "app"

    @property
    def action_name(self) -> str:
        """The action without its arguments: "pick('method')" -> "pick"."""
        return self.action.partition("(")[0]

    def binding(self) -> Binding:
        """The key binding of this command."""
        return Binding(self.keys, self.action, self.description, show=self.show, id=self.id, tooltip=self.tooltip)


COMMANDS = (
    Command("app.help", "question_mark,f1", "help", "Help", palette="Help", about="All key bindings"),
    Command("app.save", "ctrl+s", "save", "Save", tooltip="Save the session (TOML)", palette="Save session",
            about="Write the session file (TOML)"),
    Command("app.save_as", "S", "save_as", "Save as", show=False, palette="Save session as",
            about="Write the session to a new file"),
    Command("app.open", "ctrl+o", "open", "Open", show=False, palette="Open session", about="Open a session file"),
    Command("app.probe", "t", "probe", "Probe", tooltip="Run the quick probes (esc cancels)", palette="Probes",
            about="Run the quick probes on the current state"),
    Command("app.opt_in", "R", "opt_in_probes", "Reasoning probe", show=False,
            tooltip="Add the reasoning probe (thinking under budgets, slower) to the probe runs, or take it out",
            palette="Reasoning probe on/off", about="Add the opt-in probes (reasoning) to t's probe runs, or take them out"),
    Command("app.prune", "p", "prune", "Prune", tooltip="Full calibration-aware prune of the current plan",
            palette="Prune (full)", about="Re-run the calibration-aware prune of the current plan"),
    Command("app.cancel", "escape", "cancel", "Cancel work", show=False),
    Command("app.undo", "ctrl+z,u", "undo", "Undo", show=False, palette="Undo", about="Undo the last edit"),
    Command("app.redo", "ctrl+y,U", "redo", "Redo", show=False, palette="Redo", about="Redo the edit just undone"),
    Command("app.method", "m", "pick('method')", "Method", tooltip="Pick the pruning method"),
    Command("app.pattern", "n", "pick('pattern')", "N:M pattern", show=False),
    Command("app.allocator", "a", "pick('allocator')", "Alloc", tooltip="Pick the allocator (resets sliders)"),
    Command("app.allocator_params", "o", "allocator_params", "Allocator parameters", show=False,
            palette="Allocator parameters", about="Edit the parameters of the plan's allocator"),
    Command("app.global", "g", "focus_global", "Global target", show=False, where="blocks"),
    *(Command(f"app.{name}", key, name, name.capitalize(), show=False, palette=f"{name.capitalize()} GLU width",
              tooltip=f"GLU width of the focused block {sign}0.1 expansion ratio (on the global row: every block)",
              about=f"The focused block (on the global row, every block) keeps {more} neurons", where="blocks")
      for name, key, sign, more in (("narrower", "left_square_bracket", "-", "fewer"),
                                    ("wider", "right_square_bracket", "+", "more"))),
    Command("app.width_reset", "backslash", "width_reset", "Width back", show=False,
            tooltip="The focused block's width back to the global one (on the global row: full width)",
            palette="Width back", about="The focused block follows the global width (global row: full width)",
            where="blocks"),
    Command("app.drop", "x", "drop", "Drop block", show=False,
            tooltip="Drop the focused block from the forward pass, or bring it back", palette="Drop or keep block",
            about="Toggle the focused block out of (or back into) the forward pass", where="blocks"),
    Command("app.width_score", "w", "pick('width_score')", "Width score", show=False,
            tooltip="Pick the GLU neuron score (which neurons a narrower width keeps)"),
    Command("app.drop_by", "X", "drop_by", "Drop by rule", show=False,
            tooltip="Drop N blocks by a rule: lowest block influence (bi), lowest angular distance (angular), "
                    "or none to bring every block back (esc cancels the block scores)",
            palette="Drop blocks by rule", about="Drop the N blocks a rule picks (bi, angular), or none", where="blocks"),
    Command("app.width_divisor", "W", "pick('width_divisor')", "Width divisor", show=False,
            tooltip="Pick the width divisor: kept GLU neuron counts rounded to a multiple of 32, 64, 128 or 256"),
    Command("app.block_scores", "b", "block_scores", "Block scores", show=False,
            tooltip="Block influence and angular distance of the dense model per block (esc cancels)",
            palette="Block scores", about="Block influence (ShortGPT) and angular distance per block", where="blocks"),
)
CLOSING = (  # after the features' commands
    Command("app.theme", "T", "pick('theme')", "Theme", show=False),
    Command("app.quit", "q", "quit", "Quit", tooltip="Quit (also ctrl+q); unsaved edits stay in the recovery file"),
)


def command_table(features) -> tuple[Command, ...]:
    """Every command of the app: its own, then each feature's, then theme and quit."""
    return (*COMMANDS, *(command for feature in features for command in feature.commands), *CLOSING)
