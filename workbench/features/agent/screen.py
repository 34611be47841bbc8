"""The Agent screen: an agent-guided allocation run (`workbench.agent`), step by step. The settings line
(e edits them), how the run stands, a live step log (one row per step), a plot of perplexity and the
global target over the steps. r starts or resumes, space pauses after the step, x stops, escape cancels
the running step, enter makes the run's allocation the current plan. The Agent feature runs the steps as a
job (the engine is lent to the run until it ends); this screen shows the controller's run and asks the
feature."""

from __future__ import annotations

import os

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from workbench.app.controller import Controller
from workbench.app.edits import AgentForm, agent_fields, parse_agent_form
from workbench.app.format import agent_columns, agent_run_line, agent_settings_line, agent_step_cells, cells_markup
from workbench.tui.screens.params import ParamsScreen
from workbench.tui.widgets.activity import Activity
from workbench.tui.widgets.plots import AgentPlot


class AgentScreen(Screen):
    """See the module docstring. A goes back (a running agent goes on in the background), as does escape when
    nothing runs; the app then stops a paused run."""

    BINDINGS = [
        Binding("escape", "back", "Back / cancel step", id="agent.back"),
        Binding("A", "close", "Back", show=False, id="agent.close"),
        Binding("e", "settings", "Settings", id="agent.settings"),
        Binding("r", "run", "Run/resume", id="agent.run"),
        Binding("space", "pause", "Pause", id="agent.pause"),
        Binding("x", "stop", "Stop", id="agent.stop"),
        Binding("enter", "use", "Use allocation", id="agent.use", priority=True),
    ]

    DEFAULT_CSS = """
    AgentScreen > .agent-line { height: 1; padding: 0 1; background: $panel; text-wrap: nowrap;
                                text-overflow: ellipsis; }
    AgentScreen > DataTable { height: auto; max-height: 45%; }
    AgentScreen > AgentPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, feature, controller: Controller):
        super().__init__()
        self.feature = feature  # the Agent feature (`workbench.features.agent.feature`): runs, pauses, stops, uses
        self.controller = controller

    def compose(self) -> ComposeResult:
        yield Static("", id="agent-settings", classes="agent-line")
        yield Static("", id="agent-status", classes="agent-line")
        yield Activity()
        yield DataTable(cursor_type="row", zebra_stripes=True)
        yield AgentPlot()
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.refresh_view()
        self.query_one(DataTable).focus()

    def refresh_view(self) -> None:
        """Show the controller's settings and run: the two lines, every step's row, the plot."""
        controller = self.controller
        run, form = controller.agent_run, controller.agent_form
        self.query_one("#agent-settings", Static).update(agent_settings_line(form, self._target(form)))
        self.query_one("#agent-status", Static).update(cells_markup(agent_run_line(run, controller.agent_stepping)))
        records = run.records if run is not None else []
        table = self.query_one(DataTable)
        measure = (run.settings if run is not None else form.settings()).measure
        table.clear(columns=True)
        for column in agent_columns(measure):
            table.add_column(column, key=column)
        for record in records:
            table.add_row(*[self._styled(cell) for cell in agent_step_cells(record)])
        if records:
            table.move_cursor(row=len(records) - 1)
        self.query_one(AgentPlot).draw(records, measure)

    def _target(self, form: AgentForm) -> float:
        return form.target if form.target is not None else self.controller.plan.sparsity

    def _styled(self, cell) -> Text:
        """A cell as Rich text in the theme's colours."""
        style = cell.tone if cell.tone in ("", "dim") else self.app.get_css_variables().get(cell.tone, "")
        return Text(cell.text, style=style)

    # ----- actions ------------------------------------------------------------------------------------
    def action_settings(self) -> None:
        """Edit the settings (they apply to the next run)."""
        form, target = self.controller.agent_form, self.controller.plan.sparsity
        key_env = form.settings().llm.key_env
        note = f"key (llm): ${key_env} {'is set' if os.environ.get(key_env) else 'is not set'}; never shown or saved"

        def chosen(new: AgentForm | None) -> None:
            if new is not None:
                self.controller.agent_form = new
                self.refresh_view()

        self.app.push_screen(ParamsScreen("Agent settings (for the next run)", agent_fields(form, target),
                                          lambda typed: parse_agent_form(typed, target), note), chosen)

    def action_run(self) -> None:
        if self.controller.agent_stepping:
            self.notify("the agent is running: space pauses, x stops")
        else:
            self.feature.run()

    def action_pause(self) -> None:
        if self.controller.agent_stepping:
            self.feature.pause()
        else:
            self.notify("nothing runs: r starts or resumes")

    def action_stop(self) -> None:
        run = self.controller.agent_run
        if run is None or run.done:
            self.notify("no run to stop")
        else:
            self.feature.stop()

    def action_use(self) -> None:
        run = self.controller.agent_run
        if run is None or not run.records:
            self.notify("nothing to use yet: r runs the agent")
        else:
            self.feature.use()

    def action_back(self) -> None:
        """Cancel the running step (the run pauses), else go back to the blocks."""
        if self.controller.agent_stepping:
            self.app.action_cancel()
        else:
            self.dismiss()

    def action_close(self) -> None:
        """Back to the blocks; a running agent goes on in the background."""
        self.dismiss()
