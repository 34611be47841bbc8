"""The blocks screen (the app's default screen): the header, the activity line, the global row and one pane
per block with its sliders; it renders the controller's state and turns slider moves and structural keys
(width, drops, block scores) into edits of the app."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from textual.app import App, ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from workbench.app import edits
from workbench.app.edits import BlockKey, GlobalKey, LinearKey
from workbench.app.format import (Cell, Scale, cells_markup, depth_cells, global_width_cell, influence_cells, params,
                                  pct, structured, width_cells)
from workbench.jobs.results import DropsChosen
from workbench.tui.commands import COMMANDS
from workbench.tui.screens.params import ParamsScreen
from workbench.tui.screens.picker import PickerScreen
from workbench.tui.screens.value_prompt import ValuePrompt
from workbench.tui.widgets.activity import Activity
from workbench.tui.widgets.block_pane import BlockPane
from workbench.tui.widgets.header import WorkbenchHeader
from workbench.tui.widgets.headings_row import HeadingsRow
from workbench.tui.widgets.slider import Slider
from workbench.tui.widgets.stat_row import StatRow

if TYPE_CHECKING:
    from workbench.app.controller import Controller


class BlocksScreen(Screen):
    """See the module docstring. Its commands (global row, width, drops, block scores) are bound here; the
    app's own commands are bound on the app."""

    BINDINGS = [command.binding() for command in COMMANDS if command.where == "blocks"]
    app: App

    def __init__(self) -> None:
        super().__init__(id="_default")
        self.selected_linear: str | None = None

    @property
    def controller(self) -> Controller:
        return self.app.controller

    def compose(self) -> ComposeResult:
        yield WorkbenchHeader()
        yield Activity()
        yield HeadingsRow()
        yield StatRow(GlobalKey(), "all", "global target", 0.5, classes="global-row")
        with VerticalScroll(id="blocks", can_focus=False):
            yield Static("loading the model…", classes="placeholder")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one(".global-row", StatRow).slider.locked = True

    # ----- showing ------------------------------------------------------------------------------------
    def build_panes(self, blocks: int, value: float) -> None:
        """One pane per block; sliders start at the global target until the allocation arrives."""
        holder = self.query_one("#blocks", VerticalScroll)
        holder.remove_children()
        holder.mount_all([BlockPane(index, value) for index in range(blocks)])
        self.app.call_after_refresh(self._focus_first_block)

    def _focus_first_block(self) -> None:
        panes = list(self.query(BlockPane))
        if panes and self.app.screen is self:
            panes[0].row.slider.focus()

    def show_no_model(self) -> None:
        self.query_one(WorkbenchHeader).show_message("no model loaded: ctrl+o opens a session, q quits")
        self.query_one("#blocks .placeholder", Static).update("No model loaded. ctrl+o opens a session file; q quits.")

    def show_state(self, move_sliders: bool) -> None:
        """The controller's state in every pane and the global row (sliders moved to the targets when
        `move_sliders`)."""
        state, plan = self.controller.state, self.controller.plan
        locked = bool(plan.pattern)
        targets = self.controller.targets if move_sliders and self.controller.targets else None
        scale = Scale.of(state.blocks)
        for pane, block in zip(self.query(BlockPane), state.blocks):
            overridden = {x.name for x in block.linears if x.name in plan.linear_overrides}
            if block.index in plan.block_overrides:
                overridden.add("block")
            pane.show(block, scale, targets, overridden, locked)
        self._show_influence(state)
        self.show_structure()
        row = self.query_one(".global-row", StatRow)
        row.show_target(plan.sparsity, False, locked)
        row.query_one(".stats", Static).update(cells_markup([
            Cell(f"{pct(state.achieved):>6}"),
            Cell(f"{params(state.params_nonzero)} of {params(state.params_total)} left"),
        ]))
        self.refresh_header()

    def _show_influence(self, state) -> None:
        """The influence column next to the block sliders, once LayerIF influence scores are computed."""
        scores = [b.influence for b in state.blocks]
        shown = any(s is not None for s in scores)
        self.set_class(shown, "-influence")
        if shown:
            for pane, cell in zip(self.query(BlockPane), influence_cells(scores)):
                pane.show_column("influence", cell)

    def show_structure(self) -> None:
        """The width column (once the plan or the model shows any structure; dropped blocks dimmed) and the
        depth column (once block scores are computed) next to the block sliders."""
        state, structure = self.controller.state, self.controller.plan.structure
        if state is None:
            return
        panes = list(self.query(BlockPane))
        shown = structured(structure, state.blocks)
        self.set_class(shown, "-width")
        for pane, block, cell in zip(panes, state.blocks, width_cells(state.blocks, structure, self.app.hidden)):
            pane.set_class(block.index in structure.drop_blocks, "-dropped")
            pane.show_column("width", cell if shown else None)
        self.query_one(".global-row", StatRow).show_column("width", global_width_cell(structure))
        scored = any(b.block_influence is not None for b in state.blocks)
        self.set_class(scored, "-depth")
        if scored:
            for pane, cell in zip(panes, depth_cells(state.blocks)):
                pane.show_column("depth", cell)

    def refresh_header(self) -> None:
        controller = self.controller
        if not controller.loaded or self.app.engine is None:
            return
        from workbench.allocators import ALLOCATORS

        plan, path = controller.plan, controller.session_path
        self.query_one(WorkbenchHeader).show(
            self.app.model_name, plan, ALLOCATORS.get(plan.allocator).defaults, controller.state, controller.note(),
            path.name if path else None, controller.dirty, controller.probes, controller.dense_probes,
            controller.probes_stale,
        )

    # ----- sliders ------------------------------------------------------------------------------------
    def on_slider_changed(self, event: Slider.Changed) -> None:
        if self.app.has_model():
            key = event.slider.key
            self.app.pruning.edit(*edits.move_slider(self.controller.plan, key, event.value), source=key)

    def on_slider_reset(self, event: Slider.Reset) -> None:
        if self.app.has_model():
            edit = edits.reset_slider(self.controller.plan, event.slider.key)
            if edit is not None:
                self.app.pruning.edit(*edit)

    def on_slider_refused(self, event: Slider.Refused) -> None:
        plan = self.controller.plan
        if plan is not None and plan.pattern:
            self.notify(f"pattern {plan.pattern} fixes every linear; press n for unstructured to edit targets",
                        severity="warning")
        else:
            self.notify("the model is still loading", severity="warning")

    def on_slider_value_wanted(self, event: Slider.ValueWanted) -> None:
        slider = event.slider
        self.app.push_screen(ValuePrompt(slider.label or "sparsity", slider.value, slider.maximum), slider.typed)

    def on_descendant_focus(self, event) -> None:
        slider = event.widget
        if not isinstance(slider, Slider) or self.controller.state is None:
            return
        match slider.key:
            case LinearKey(name):  # a module's row (an expert): its first linear
                self.selected_linear = next(x.name for b in self.controller.state.blocks for x in b.linears
                                            if x.name == name or x.name.startswith(f"{name}."))
            case BlockKey(index):
                self.selected_linear = self.controller.default_linear(index)

    def action_focus_global(self) -> None:
        self.set_focus(self.query_one(".global-row", StatRow).slider)

    # ----- structure ----------------------------------------------------------------------------------
    def _ready(self) -> bool:
        return self.app.has_model() and self.controller.state is not None

    def _focused_block(self) -> int | None:
        """The block of the focused slider (a linear's block too); None on the global row."""
        slider = self.focused
        match slider.key if isinstance(slider, Slider) else GlobalKey():
            case BlockKey(index):
                return index
            case LinearKey(name):
                return next(b.index for b in self.controller.state.blocks
                            if any(x.name == name or x.name.startswith(f"{name}.") for x in b.linears))
        return None

    def _focused_expert(self) -> tuple[int, int] | None:
        """(block, expert) of the focused linear when it belongs to a routed expert."""
        slider = self.focused
        if isinstance(slider, Slider) and isinstance(slider.key, LinearKey):
            for block in self.controller.state.blocks:
                for x in [*block.linears, *block.experts]:
                    if x.name == slider.key.name and x.expert is not None:
                        return block.index, x.expert
        return None

    def _step_width(self, steps: int) -> None:
        """Move the focused block's expansion ratio (on the global row, the global one) by `steps` steps."""
        if not self._ready():
            return
        plan, blocks, hidden = self.controller.plan, self.controller.state.blocks, self.app.hidden
        block = self._focused_block()
        if block is None:
            full = max(b.intermediate for b in blocks) / hidden
            self.app.pruning.edit(*edits.set_width(plan, edits.step_ratio(plan.structure.width_ratio, full, steps)),
                          source="width")
            return
        full = blocks[block].intermediate / hidden
        ratio = edits.step_ratio(plan.structure.width_overrides.get(block, plan.structure.width_ratio), full, steps)
        self.app.pruning.edit(*edits.set_block_width(plan, block, full if ratio is None else ratio), source=("width", block))

    def action_narrower(self) -> None:
        self._step_width(-1)

    def action_wider(self) -> None:
        self._step_width(1)

    def action_width_reset(self) -> None:
        """The focused block follows the global width again; on the global row, every block is at full width."""
        if self._ready():
            block, plan = self._focused_block(), self.controller.plan
            self.app.pruning.edit(*(edits.set_width(plan, None) if block is None else edits.reset_block_width(plan, block)))

    def action_drop(self) -> None:
        """Drop the focused block from the forward pass, or bring it back (never every block); on an expert's
        linear, drop or keep that expert."""
        if not self._ready():
            return
        expert = self._focused_expert()
        if expert is not None:
            self.app.pruning.edit(*edits.toggle_expert_drop(self.controller.plan, *expert))
            return
        block = self._focused_block()
        if block is None:
            self.notify("focus a block to drop it (x)", severity="warning")
            return
        try:
            self.app.pruning.edit(*edits.toggle_drop(self.controller.plan, block, len(self.controller.state.blocks)))
        except ValueError as error:
            self.notify(str(error), severity="warning")

    def action_drop_by(self) -> None:
        """Drop N blocks by a rule (bi, angular) from the dense model's depth scores, or none: one undoable edit."""
        if self._ready():
            current = "bi" if self.controller.plan.structure.drop_blocks else edits.NO_DROPS
            self.app.push_screen(PickerScreen("Drop blocks by rule", edits.DROP_RULES, current), self._drop_rule_chosen)

    def _drop_rule_chosen(self, rule: str | None) -> None:
        if rule is None:
            return
        if rule == edits.NO_DROPS:
            self._set_drops([], rule)
            return
        count = max(1, len(self.controller.plan.structure.drop_blocks))
        hint = f"blocks to drop by {rule} (the model has {len(self.controller.state.blocks)})"
        self.app.push_screen(ParamsScreen(f"Drop blocks by {rule}", [(edits.DROP_COUNT, str(count), hint)],
                                          edits.parse_drop_count), partial(self._drop_count_chosen, rule))

    def _drop_count_chosen(self, rule: str, count: int | None) -> None:
        if count is None or self.controller.state is None:
            return
        try:
            edits.check_drop_count(count, len(self.controller.state.blocks))
        except ValueError as error:
            self.notify(str(error), severity="warning")
            return
        self.app.pruning.when_applied(partial(self.app.start_job, "drops", f"choosing {count} blocks by {rule}",
                                      count=count, rule=rule))

    def drops_chosen(self, message: DropsChosen) -> None:
        self._set_drops(message.blocks, message.rule)

    def _set_drops(self, chosen: list[int], rule: str) -> None:
        """One undoable edit: exactly the blocks `chosen` are dropped (a refusal is a warning)."""
        if self.controller.state is None:
            return
        try:
            self.app.pruning.edit(*edits.set_drops(self.controller.plan, chosen, len(self.controller.state.blocks), rule))
        except ValueError as error:
            self.notify(str(error), severity="warning")

    def action_block_scores(self) -> None:
        """Compute block influence and angular distance per block (of the dense model, once; esc cancels)."""
        if self.app.has_model():
            self.app.pruning.when_applied(self._start_block_scores)

    def _start_block_scores(self) -> None:
        if not self.app.jobs.running("scores"):
            self.app.start_job("block_scores", "block scores")
