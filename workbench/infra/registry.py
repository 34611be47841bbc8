"""A tiny plugin registry: each method, allocator and probe is one module that registers itself."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

from workbench.infra.errors import WorkbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, discovered from the modules of one package on first use."""

    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str):
        """Decorator: `@REGISTRY.register("wanda")` on a function or class."""

        def decorate(entry: T) -> T:
            self._entries[name] = entry
            return entry

        return decorate

    def add(self, entry: T) -> T:
        """Register an entry that carries its own `name` (a method, an allocator)."""
        return self.register(entry.name)(entry)

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._discover()
        return sorted(self._entries)

    def get(self, name: str, where: str | None = None) -> T:
        """The entry called `name`, or a one-line error listing the known names."""
        self._discover()
        if name not in self._entries:
            raise WorkbenchError(where or self.kind, f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name]
