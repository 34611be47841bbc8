"""The Compare feature: opens the Compare screen, runs its variants as a comparison job (it holds the
engine exclusively) and makes a measured variant the current plan."""

from __future__ import annotations

from typing import Callable

from workbench.tui.commands import Command
from workbench.features.compare.job import KIND, Compared
from workbench.features.compare.screen import CompareScreen, CompareTable
from workbench.tui.feature import FEATURES, Feature


@FEATURES.add
class CompareFeature(Feature):
    """See the module docstring."""

    name = "compare"
    order = 2
    commands = (Command("app.compare", "c", "feature('compare')", "Compare", show=False,
                        tooltip="Compare screen: variants (allocators, methods, targets) side by side",
                        palette="Compare", about="Compare allocators and methods side by side, pick one as the plan"),)
    help = ("Compare screen (c)", [*CompareScreen.BINDINGS, *CompareTable.BINDINGS])
    screens = (CompareScreen,)
    jobs = (KIND,)
    heal = False  # the variants run are also healed (toggled on the Compare screen)

    @property
    def results(self) -> dict[type, Callable]:
        return {Compared: self.compared}

    def start(self) -> None:
        app = self.app
        if app.has_model() and app.controller.state is not None:
            app.push_screen(CompareScreen(self, app.controller, app.pruning.probe_list()))

    def run(self) -> None:
        """Run the variants not measured yet, once the current plan is applied."""
        self.app.pruning.when_applied(self._submit)

    def _submit(self) -> None:
        from workbench.studies.compare import Variant

        app = self.app
        variants = [Variant(name, plan) for name, plan in app.controller.variants.queued]
        if not variants or app.jobs.holder is not None:
            return
        app.pruning.lend("comparing variants", app.engine.calibrated_with or app.controller.plan)
        heal = None
        if self.heal:
            from workbench.recovery.spec import HealSpec

            heal = HealSpec()
        app.jobs.submit("compare", variants=variants, probes=app.pruning.probe_list(), heal=heal)
        self._refresh_screens()

    @property
    def running(self) -> bool:
        return self.app.jobs.running("compare")

    def compared(self, message: Compared) -> None:
        """The comparison gave the engine back with what it measured (also after a cancel or a failure)."""
        app = self.app
        if message.comparison.results:
            app.controller.compared(message.comparison)
            app.save_recovery()
        app.pruning.engine_back(message.holds)
        self._refresh_screens()

    def ended(self, job) -> None:
        if job.kind.name == "compare":
            self._refresh_screens()

    def _refresh_screens(self) -> None:
        for screen in self.app.screen_stack:
            if isinstance(screen, CompareScreen):
                screen.refresh_view()

    def use(self, variant: str) -> None:
        """Make a measured variant the current plan (one undoable edit), with the full prune it was measured
        with."""
        app = self.app
        plan, label = app.controller.variants.variant(variant)
        app.pop_screen()
        if app.controller.edit(plan, label):
            app.pruning.plan_changed()
            app.pruning.run_prune(calibrate=plan)
            app.notify(f"using {variant} (u undoes)")
