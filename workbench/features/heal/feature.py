"""The healing feature: heals the current plan as a job (it holds the engine exclusively; escape cancels,
h again resumes from the run's checkpoint), then shows the probes before and after on the Heal screen."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from workbench.features.heal.job import KIND, RESTORE, HealEnded, HealRestored
from workbench.features.heal.screen import HealScreen
from workbench.jobs.results import Probed
from workbench.tui.commands import Command
from workbench.tui.feature import FEATURES, Feature


@FEATURES.add
class HealFeature(Feature):
    """See the module docstring."""

    name = "heal"
    order = 5
    commands = (Command("app.heal", "h", "feature('heal')", "Heal", show=False,
                        tooltip="Heal: masked LoRA that keeps the cut (100 steps), probes before and after "
                                "(escape cancels, h resumes)",
                        palette="Heal", about="Recover after pruning with LoRA that keeps the cut; probes before and after"),)
    help = ("Heal screen (h)", HealScreen.BINDINGS)
    screens = (HealScreen,)
    jobs = (KIND, RESTORE)

    @property
    def results(self) -> dict[type, Callable]:
        return {HealEnded: self.healed, HealRestored: self.restored}

    @property
    def checkpoint(self) -> Path:
        """Where a cancelled run waits to be resumed: beside this instance's recovery file."""
        recovery = self.app.sessions.recovery_path
        return recovery.with_name(recovery.stem + ".heal.pt")

    def start(self) -> None:
        """Heal the current plan (cancel with escape)."""
        app = self.app
        if app.has_model() and app.controller.state is not None:
            app.pruning.when_applied(self._submit)

    def _submit(self) -> None:
        from workbench.recovery.spec import HealSpec

        app = self.app
        if app.jobs.holder is not None:
            return
        app.pruning.lend("healing", None)
        app.jobs.submit("heal", spec=HealSpec(), probes=tuple(app.pruning.probe_list()), checkpoint=self.checkpoint)

    def reopen(self, record, path: Path) -> None:
        """An opened session was healed: once its plan is applied, its trained tensors go back on the model
        (a session without them, such as the recovery file, says h heals again)."""
        app = self.app
        if not record.file:
            app.notify("this session was healed; its trained tensors were not saved beside it: h heals again")
            return

        def submit() -> None:
            if app.jobs.holder is None:
                app.pruning.lend("putting the healing back", None)
                app.jobs.submit("heal-restore", record=record, path=path)

        app.pruning.when_applied(submit)

    def restored(self, message: HealRestored) -> None:
        app = self.app
        app.pruning.engine_back(message.holds)
        if message.record is None:
            app.notify(f"healing not put back: {message.problem}", severity="warning")
            return
        app.controller.healing = message.record
        app.notify(f"healing put back from {message.record.file} (SHA-256 and digest checked)")

    def healed(self, message: HealEnded) -> None:
        app = self.app
        app.pruning.engine_back(message.holds)
        if message.record is None:
            app.notify("healing stopped: the model is as it was; h resumes from the last checkpoint", severity="warning")
            return
        app.controller.healing = message.record
        app.pruning.probed(Probed(message.after, message.dense, message.holds))
        app.push_screen(HealScreen(message.record, message.after, message.dense))
