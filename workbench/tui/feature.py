"""What a UI feature registers with the app: its commands (key bindings and palette entries), a help
section, the full screens it shows over the blocks, its job kinds (UI-free bodies, in its folder's
job.py) and what it does with the job results it owns. Each folder of `workbench.features` holds one,
registered from its `feature.py` with `@FEATURES.add`; the app finds them there."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from workbench.infra.registry import Registry
from workbench.jobs.core import JobKind
from workbench.tui.commands import Command


class Feature(ABC):
    """A feature of `app`; subclasses set the class attributes and `start` (its command's action)."""

    name: str = ""
    order: int = 0  # where its commands and help come among the features'
    commands: tuple[Command, ...] = ()
    help: tuple[str, list[Binding]] | None = None
    screens: tuple[type[Screen], ...] = ()
    jobs: tuple[JobKind, ...] = ()

    def __init__(self, app: App):
        self.app = app

    @property
    def results(self) -> dict[type, Callable]:
        """The job states and results this feature handles, by type."""
        return {}

    @abstractmethod
    def start(self) -> None:
        """What its command does."""

    def ended(self, job) -> None:
        """A job (any) ended: a feature whose screen shows what runs redraws it."""


FEATURES: Registry[type[Feature]] = Registry("feature", "workbench.features", module="feature")


def features() -> tuple[type[Feature], ...]:
    """The Feature of every folder of `workbench.features`, in their `order`."""
    return tuple(sorted(FEATURES.entries(), key=lambda feature: feature.order))
