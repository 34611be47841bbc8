"""The header: model, method, allocator and pattern; target against achieved sparsity and the weights
left; the latest probe results with their change against dense."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from workbench.app.format import cells_markup, escape, plan_line, probes_line, sparsity_line


class WorkbenchHeader(Vertical):
    """Three lines (long model names end in an ellipsis); many probe results wrap onto a fourth."""

    DEFAULT_CSS = """
    WorkbenchHeader { height: auto; background: $panel; padding: 0 1; dock: top; }
    WorkbenchHeader > Static { width: 1fr; height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    WorkbenchHeader > #probes-line { height: auto; max-height: 2; text-wrap: wrap; }
    WorkbenchHeader > #plan-line { text-style: bold; color: $primary; }
    """

    def compose(self) -> ComposeResult:
        yield Static("workbench", id="plan-line")
        yield Static("loading…", id="sparsity-line")
        yield Static("", id="probes-line")

    def show(self, model: str, plan, allocator_defaults: dict, state, note: str | None, session: str | None,
             dirty: bool, probes: list, dense: dict, probes_stale: bool) -> None:
        """Refresh all three lines."""
        line = plan_line(model, plan, session, dirty, allocator_defaults)
        self.query_one("#plan-line", Static).update(escape(line))
        self.query_one("#sparsity-line", Static).update(cells_markup(sparsity_line(state, plan, note)))
        self.query_one("#probes-line", Static).update(cells_markup(probes_line(probes, dense, probes_stale)))

    def show_message(self, text: str) -> None:
        """Before a model is loaded: one line of status."""
        self.query_one("#sparsity-line", Static).update(escape(text))
