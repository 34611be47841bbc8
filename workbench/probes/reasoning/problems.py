"""The reasoning probe's problems: seeded multi-step arithmetic and word problems with integer answers in
four difficulty levels, and a hand-written set (`handwritten.toml`) with known answers.

Levels: 1 one operation on digits ("What is 7 + 5?"); 2 one operation on numbers up to 20; 3 a one-step
word problem; 4 a two-step word problem. Every answer is a whole number >= 0. The embedded 135M model
solves about half of level 1 and little above it dense, so the levels span what small and large models do.

A problem is drawn from `random.Random(f"reasoning:{split}:{seed}:{level}")` (Python's generator, identical
on every machine). The `evaluation` split is what the probe asks; the `train` split (self-generated
calibration) is drawn from its own stream and any problem whose text is also an evaluation problem of
either size is dropped, so no evaluation item can reach calibration.
"""

from __future__ import annotations

import itertools
import random
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from workbench.infra.errors import WorkbenchError

LEVELS = (1, 2, 3, 4)
EVALUATION, TRAIN = "evaluation", "train"
PER_LEVEL = {"quick": 4, "full": 24}  # generated problems per level
ATTEMPTS = 20  # draws per problem before a level is taken as exhausted
SETS = ("standard", "generated", "handwritten")  # standard: generated, plus the hand-written set at full size

NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jo", "Kofi", "Lena")
ITEMS = ("apples", "pencils", "marbles", "stickers", "books", "cookies", "stamps", "shells")


@dataclass(frozen=True)
class Problem:
    """One question with its integer answer; `level` 0 marks a hand-written problem."""

    question: str
    answer: int
    level: int


def _operation(rng: random.Random, high: int, level: int) -> Problem:
    a, b = rng.randint(1, high), rng.randint(1, high)
    op = rng.choice("+-*")
    if op == "-" and b > a:
        a, b = b, a
    if op == "*":
        b = rng.randint(2, 9)
    answer = a + b if op == "+" else a - b if op == "-" else a * b
    return Problem(f"What is {a} {op} {b}?", answer, level)


def _digits(rng: random.Random) -> Problem:
    return _operation(rng, 9, 1)


def _up_to_twenty(rng: random.Random) -> Problem:
    return _operation(rng, 20, 2)


def _one_step(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        return Problem(f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?", a + b, 3)
    if kind == 1:
        a = rng.randint(10, 40)
        b = rng.randint(2, a - 1)
        return Problem(f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?", a - b, 3)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return Problem(f"There are {a} bags with {b} {item} in each bag. How many {item} are there in all?", a * b, 3)


def _two_steps(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(5, 30), rng.randint(2, 20)
        c = rng.randint(1, a + b - 1)
        return Problem(f"{name} has {a} {item}, buys {b} more and then gives {c} to a friend. "
                       f"How many {item} does {name} have now?", a + b - c, 4)
    if kind == 1:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20)
        return Problem(f"{name} buys {a} boxes of {b} {item} and already had {c}. "
                       f"How many {item} does {name} have in total?", a * b + c, 4)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    c = rng.randint(1, a * b - 1)
    return Problem(f"There are {a} rows of {b} {item}. {c} of them are taken away. How many {item} are left?",
                   a * b - c, 4)


GENERATORS = {1: _digits, 2: _up_to_twenty, 3: _one_step, 4: _two_steps}


def generated(seed: int, per_level: int, split: str = EVALUATION) -> list[Problem]:
    """`per_level` problems of every level, level by level, reproducible from `seed`; no two alike (a level
    with fewer distinct problems, such as level 1's 200 or so, gives what `ATTEMPTS` draws per problem find)."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for level in LEVELS:
        rng, drawn = random.Random(f"reasoning:{split}:{seed}:{level}"), 0
        for _ in range(ATTEMPTS * per_level):
            if drawn == per_level:
                break
            problem = GENERATORS[level](rng)
            if problem.question not in seen:
                seen.add(problem.question)
                problems.append(problem)
                drawn += 1
    return problems


@lru_cache(maxsize=None)
def handwritten() -> tuple[Problem, ...]:
    """The hand-written problems of `handwritten.toml`, in file order."""
    data = tomllib.loads(resources.files(__package__).joinpath("handwritten.toml").read_text("utf-8"))
    return tuple(Problem(p["question"], int(p["answer"]), 0) for p in data["problem"])


def evaluation_problems(problem_set: str, size: str, seed: int) -> list[Problem]:
    """The problems the probe asks for a set name and size."""
    if problem_set not in SETS:
        raise WorkbenchError("reasoning.problem_set", f"unknown problem set {problem_set!r} (use {', '.join(SETS)})")
    if problem_set == "handwritten":
        return list(handwritten())
    extra = list(handwritten()) if problem_set == "standard" and size == "full" else []
    return generated(seed, PER_LEVEL[size]) + extra


@lru_cache(maxsize=8)
def training_problems(seed: int, count: int) -> tuple[Problem, ...]:
    """`count` problems of the train split, levels in turn, none of them an evaluation problem of any size
    or set (the generated ones for `seed`, and the hand-written ones)."""
    held = {p.question for p in generated(seed, max(PER_LEVEL.values()))} | {p.question for p in handwritten()}
    per_level = -(-count // len(LEVELS))
    pool = [p for p in generated(seed, 2 * per_level + 8, TRAIN) if p.question not in held]
    by_level = [[p for p in pool if p.level == level] for level in LEVELS]
    mixed = [p for group in itertools.zip_longest(*by_level) for p in group if p is not None]
    return tuple(mixed[:count])
