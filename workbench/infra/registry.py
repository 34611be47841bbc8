"""A tiny plugin registry: each method, allocator and probe is one module that registers itself."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from typing import Generic, TypeVar

from workbench.infra.errors import WorkbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, discovered on first use from the modules of one package, or with `module`
    from that module of each of its subpackages (`Registry("session section", "workbench.features",
    module="section")` imports `workbench.features.compare.section` and its siblings)."""

    def __init__(self, kind: str, package: str, module: str | None = None):
        self.kind = kind
        self.package = package
        self.module = module
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
            if info.name.startswith("_"):
                continue
            if self.module is None:
                importlib.import_module(f"{self.package}.{info.name}")
            elif info.ispkg and importlib.util.find_spec(f"{self.package}.{info.name}.{self.module}"):
                importlib.import_module(f"{self.package}.{info.name}.{self.module}")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._discover()
        return sorted(self._entries)

    def entries(self) -> list[T]:
        """Registered entries, in the order of their names."""
        return [self._entries[name] for name in self.names()]

    def get(self, name: str, where: str | None = None) -> T:
        """The entry called `name`, or a one-line error listing the known names."""
        self._discover()
        if name not in self._entries:
            raise WorkbenchError(where or self.kind, f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name]
