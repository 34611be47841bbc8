"""Declared parameters: one `Param` per method or allocator parameter (name, default, range or choices,
help), from which the defaults, the check, the CLI's help and parsing and the app's form are all derived.

A number's range is `low`/`high`, each closed unless `open_low`/`open_high`; `whole` asks for a whole
number. A word's `choices` lists what it may be. A `recorded` parameter is written by a search (the
agent's decisions), never typed in: forms and the CLI leave it out, and its owner checks it.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.infra.errors import WorkbenchError


@dataclass(frozen=True)
class Param:
    """One declared parameter (see the module docstring)."""

    name: str
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    whole: bool = False
    choices: tuple[str, ...] = ()
    recorded: bool = False

    @property
    def is_word(self) -> bool:
        """Whether the value is a word (else a number)."""
        return isinstance(self.default, str)

    def bounds(self) -> str:
        """The range in words: "in [0, 1)", "> 0", "a whole number >= 1", "one of a, b"; "" if none."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        low = None if self.low is None else f"{self.low:g}"
        high = None if self.high is None else f"{self.high:g}"
        if low is not None and high is not None:
            text = f"in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        elif low is not None:
            text = f"{'>' if self.open_low else '>='} {low}"
        elif high is not None:
            text = f"{'<' if self.open_high else '<='} {high}"
        else:
            text = ""
        return f"a whole number {text}".strip() if self.whole else text

    @property
    def hint(self) -> str:
        """One line for forms and help: what it does, then its range."""
        bounds = self.bounds()
        return f"{self.help} ({bounds})" if bounds and not self.recorded else self.help

    def check(self, value, where: str) -> None:
        """Refuse a value of the wrong type or out of range, naming `where.name`."""
        at = f"{where}.{self.name}"
        if self.recorded:
            return
        if self.is_word:
            if not isinstance(value, str):
                raise WorkbenchError(at, f"must be a word, got {value!r}")
            if self.choices and value not in self.choices:
                raise WorkbenchError(at, f"unknown {self.name} {value!r} (use {', '.join(self.choices)})")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WorkbenchError(at, f"must be a number, got {value!r}")
        below = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        above = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if below or above or (self.whole and value != int(value)):
            raise WorkbenchError(at, f"must be {self.bounds()}, got {value:g}")

    def parse(self, text: str):
        """A typed value (CLI or form text) in this parameter's type; ValueError naming it."""
        text = text.strip()
        if self.is_word:
            return text
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{self.name}: not a number: {text!r}") from None
        return int(value) if self.whole and value == int(value) else value


def defaults(declared: tuple[Param, ...]) -> dict:
    """Every parameter's default, by name."""
    return {p.name: p.default for p in declared}


def complete(kind: str, name: str, declared: tuple[Param, ...], given: dict, where: str) -> dict:
    """`given` completed with the defaults and checked: unknown names, wrong types and values out of
    range are refused in one line naming `where.KEY`."""
    known = {p.name: p for p in declared}
    unknown = set(given) - set(known)
    if unknown:
        raise WorkbenchError(where, f"unknown parameter(s) {', '.join(sorted(unknown))} for {kind} {name} "
                                    f"(known: {', '.join(known) or 'none'})")
    values = {**defaults(declared), **given}
    for key, value in given.items():
        known[key].check(value, where)
    return values


def parse_typed(declared: tuple[Param, ...], typed: dict[str, str], where: str) -> dict:
    """Text values (KEY=VALUE options, form fields) typed by their declarations; unknown keys are refused."""
    known = {p.name: p for p in declared if not p.recorded}
    values = {}
    for key, text in typed.items():
        if key not in known:
            raise WorkbenchError(where, f"unknown parameter {key!r} (known: {', '.join(known) or 'none'})")
        try:
            values[key] = known[key].parse(text)
        except ValueError as error:
            raise WorkbenchError(where, str(error)) from None
    return values


def help_line(name: str, declared: tuple[Param, ...]) -> str:
    """"owl: M (> 0), lambda (in [0, 1))": an entry's typed parameters for a CLI option's help."""
    typed = [f"{p.name} ({p.bounds()})" if p.bounds() else p.name for p in declared if not p.recorded]
    return f"{name}: {', '.join(typed)}" if typed else ""
