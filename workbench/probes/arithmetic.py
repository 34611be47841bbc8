"""Arithmetic probe: addition, subtraction and multiplication of growing digit counts, scored by exact
match of the greedily generated number.

Problems come from `random.Random(f"arithmetic:{seed}")`: for every operation and digit count d,
addition adds two d-digit numbers, subtraction takes a smaller d-digit number from a larger one, and
multiplication multiplies a d-digit number by a one-digit number (2-9). One few-shot header of
worked lines ("31 + 27 = 58") precedes every problem; the model continues "a op b =" and the first
integer of its line is compared with the true result. Layer pruning is known to break this skill.
"""

from __future__ import annotations

import operator
import random
import re
from dataclasses import dataclass

from workbench.probes import EXACT_MATCH_FLIPS, PROBES, Probe, ProbeContext, right_or_wrong
from workbench.probes._generate import encode, greedy_generate

OPERATIONS = {"+": ("addition", operator.add), "-": ("subtraction", operator.sub), "*": ("multiplication", operator.mul)}
DIGITS = {"quick": (1, 2), "full": (1, 2, 3, 4)}
PER_CELL = {"quick": 8, "full": 40}  # problems per (operation, digit count)
BATCH = 64
FEW_SHOT = ((2, "+", 3), (14, "-", 5), (7, "*", 8), (31, "+", 27), (52, "-", 19), (23, "*", 4))


@dataclass(frozen=True)
class Problem:
    """One problem `a op b`; `digits` is the digit count it was drawn for."""

    a: int
    op: str
    b: int
    digits: int

    @property
    def answer(self) -> int:
        return OPERATIONS[self.op][1](self.a, self.b)

    @property
    def text(self) -> str:
        return f"{self.a} {self.op} {self.b} ="


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def make_problems(seed: int, digits: tuple[int, ...], per_cell: int) -> list[Problem]:
    """`per_cell` problems for every operation and digit count, reproducible from `seed`."""
    rng = random.Random(f"arithmetic:{seed}")
    problems = []
    for op in OPERATIONS:
        for d in digits:
            for _ in range(per_cell):
                a = _operand(rng, d)
                b = rng.randint(2, 9) if op == "*" else _operand(rng, d)
                if op == "-" and b > a:
                    a, b = b, a
                problems.append(Problem(a, op, b, d))
    return problems


def few_shot_header() -> str:
    """The worked examples that precede every problem, one per line."""
    return "".join(f"{p.text} {p.answer}\n" for p in (Problem(a, op, b, 0) for a, op, b in FEW_SHOT))


def extract_number(text: str) -> int | None:
    """The first integer in `text` (a leading minus sign and thousands separators allowed), or None."""
    match = re.search(r"-?\d+(?:,\d{3})*", text)
    return int(match.group().replace(",", "")) if match else None


@PROBES.register("arithmetic")
class Arithmetic(Probe):
    """Exact-match accuracy of generated results; the floor is 0."""

    name = "arithmetic"
    metric = "exact match"
    higher_is_better = True
    tolerance_items = EXACT_MATCH_FLIPS
    floor = 0.0

    def measure(self, ctx: ProbeContext, size: str):
        problems = make_problems(ctx.seed, DIGITS[size], PER_CELL[size])
        header = few_shot_header()
        prompts = [encode(ctx.tokenizer, header + p.text) for p in problems]
        longest = max(len(encode(ctx.tokenizer, f" {p.answer}\n")) for p in problems)
        outputs = greedy_generate(ctx.model, ctx.tokenizer, prompts, longest + 1, ctx.device, stop=("\n",),
                                  cancel=ctx.check_cancel, batch_size=BATCH)
        correct = [extract_number(out) == p.answer for p, out in zip(problems, outputs)]
        cells: dict[str, list[bool]] = {}
        for p, ok in zip(problems, correct):
            cells.setdefault(f"{OPERATIONS[p.op][0]} {p.digits}-digit", []).append(ok)
        details = {
            "accuracy": {cell: sum(oks) / len(oks) for cell, oks in cells.items()},
            "correct": sum(correct),
            "examples": [f"{p.text} {out.strip()}" for p, out in zip(problems, outputs)][:: PER_CELL[size]],
        }
        return sum(correct) / len(problems), len(problems), details, right_or_wrong(correct)
