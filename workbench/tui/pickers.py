"""The app's choices (method, pattern, allocator, width score and divisor, theme): each is a dialog on its
key and one command-palette entry per option ("Method: wanda"); and the allocator's parameter form."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from textual.app import App

from workbench.app import edits
from workbench.tui.screens.params import ParamsScreen
from workbench.tui.screens.picker import PickerScreen


UNSTRUCTURED = "unstructured"
PATTERNS = [(UNSTRUCTURED, "any weight may go; sliders set each block and linear"),
            ("2:4", "2 of every 4 consecutive inputs are zero (50%, fixed)"),
            ("4:8", "4 of every 8 consecutive inputs are zero (50%, fixed)")]


@dataclass(frozen=True)
class Picker:
    """One of the app's choices: a dialog on its key, and one command-palette entry per option
    ("Method: wanda"). `choose` gets the option picked."""

    name: str
    title: str
    options: Callable[[], list[tuple[str, str]]]
    current: Callable[[], str]
    choose: Callable[[str], None]
    needs_model: bool = True


class Pickers(dict):
    """The app's pickers by kind; `open(kind)` shows one."""

    def __init__(self, app: App):
        plan = lambda: app.controller.plan  # noqa: E731 - the plan at the time of the pick
        edit = lambda change: lambda value: app.pruning.edit(*change(plan(), value))  # noqa: E731
        super().__init__(
            method=Picker("Method", "Pruning method", edits.method_options, lambda: plan().method,
                          edit(edits.choose_method)),
            pattern=Picker("Pattern", "Sparsity pattern", lambda: PATTERNS, lambda: plan().pattern or UNSTRUCTURED,
                           edit(lambda p, value: edits.choose_pattern(p, None if value == UNSTRUCTURED else value))),
            allocator=Picker("Allocator", "Allocator (resets the sliders to its allocation)", edits.allocator_options,
                             lambda: plan().allocator, self._choose_allocator),
            width_score=Picker("Width score", "GLU neuron score (which neurons a narrower width keeps)",
                               edits.width_score_options, lambda: plan().structure.width_score,
                               edit(edits.choose_width_score)),
            width_divisor=Picker("Width divisor", "Width divisor (kept GLU neurons a multiple of it)",
                                 edits.width_divisor_options, self._width_divisor,
                                 edit(lambda p, value: edits.choose_width_divisor(
                                     p, None if value == edits.WIDTH_DIVISOR_NONE else int(value)))),
            theme=Picker("Theme", "Theme", lambda: [(name, "") for name in app.theme_names], lambda: app.theme,
                         self._choose_theme, needs_model=False),
        )
        self.app = app

    def open(self, kind: str) -> None:
        """Show the picker of `kind`; the option picked is chosen."""
        picker = self[kind]
        if picker.needs_model and not self.app.has_model():
            return

        def chosen(value: str | None) -> None:
            if value is not None:
                picker.choose(value)

        self.app.push_screen(PickerScreen(picker.title, picker.options(), picker.current()), chosen)

    def _width_divisor(self) -> str:
        divisor = self.app.controller.plan.structure.width_divisor
        return edits.WIDTH_DIVISOR_NONE if divisor is None else str(divisor)

    def _choose_theme(self, name: str) -> None:
        self.app.theme = name
        if self.app.controller.loaded:
            self.app.save_recovery()

    def _choose_allocator(self, name: str) -> None:
        """Another allocator; one that searches (prunes and probes to decide) opens the Agent screen instead,
        so its loop never runs unseen inside a prune (the same allocator keeps its recorded decisions)."""
        if edits.searches(name) and name != self.app.controller.plan.allocator:
            self.app.features["agent"].start()
        else:
            self.app.pruning.edit(*edits.choose_allocator(self.app.controller.plan, name))

    def allocator_params(self) -> None:
        """Edit the numeric and word parameters of the plan's allocator; a searching allocator's settings are
        on the Agent screen."""
        app = self.app
        if not app.has_model():
            return
        plan = app.controller.plan
        if edits.searches(plan.allocator):
            app.features["agent"].start()
            return
        fields = edits.param_fields(plan.allocator, plan.allocator_params)
        if not fields:
            app.notify(f"{plan.allocator} has no parameters; a picks another allocator")
            return
        parse = partial(edits.parse_allocator_params, plan.allocator)
        app.push_screen(ParamsScreen(f"{plan.allocator} parameters", fields, parse), self._set_allocator_params)

    def _set_allocator_params(self, values: dict | None) -> None:
        if values is not None:
            self.app.pruning.edit(*edits.set_allocator_params(self.app.controller.plan, values))
