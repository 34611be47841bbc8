"""The sensitivity feature: a scan of each block of the current plan as a job (it holds the engine
exclusively), shown as a heat column beside the block sliders."""

from __future__ import annotations

from typing import Callable

from workbench.app.format import PROBE_LABELS, heat_cells
from workbench.tui.commands import Command
from workbench.tui.feature import FEATURES, Feature
from workbench.features.sensitivity.job import KIND, Scanned
from workbench.tui.widgets.block_pane import BlockPane
from workbench.tui.widgets.headings_row import HeadingsRow


@FEATURES.add
class SensitivityFeature(Feature):
    """See the module docstring."""

    name = "sensitivity"
    order = 3
    commands = (Command("app.sensitivity", "s", "feature('sensitivity')", "Sensitivity", show=False,
                        tooltip="Sensitivity scan: the probe change when only one block is pruned 10 points harder "
                                "(esc cancels)",
                        palette="Sensitivity scan", about="Per block, the KL (from the dense model) cost of raising only its target"),)
    jobs = (KIND,)

    @property
    def results(self) -> dict[type, Callable]:
        return {Scanned: self.scanned}

    def start(self) -> None:
        """Scan the sensitivity of each block on the current plan (cancel with escape)."""
        app = self.app
        if not app.has_model():
            return
        if app.controller.plan.pattern:
            app.notify(f"pattern {app.controller.plan.pattern} fixes every block; n picks unstructured",
                       severity="warning")
            return
        app.pruning.when_applied(self._submit)

    def _submit(self) -> None:
        app = self.app
        if app.jobs.holder is not None:
            return
        app.pruning.lend("sensitivity scan", None)
        app.jobs.submit("sensitivity", plan=app.controller.plan)

    def scanned(self, message: Scanned) -> None:
        app = self.app
        if message.sensitivity is not None:
            app.controller.scanned(message.sensitivity)
            self.show_heat()
            app.save_recovery()
        app.pruning.engine_back(message.holds)

    def show_heat(self) -> None:
        """The sensitivity column next to the block sliders (hidden when there is no scan)."""
        app = self.app
        scan = app.controller.sensitivity
        blocks = app.screen_stack[0]
        blocks.set_class(scan is not None, "-heat")
        if scan is None:
            return
        from workbench.probes import PROBES

        blocks.query_one(HeadingsRow).show_heat(f"Δ{PROBE_LABELS.get(scan.probe, scan.probe)}")
        for pane, cell in zip(blocks.query(BlockPane), heat_cells(scan.deltas, PROBES.get(scan.probe).higher_is_better)):
            pane.show_column("heat", cell)
