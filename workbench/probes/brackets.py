"""Brackets probe: close a prefix of nested ()[]{}<>, scored by greedy exact match of the closing
sequence, with a log-likelihood variant that still separates models too small to generate it.

Prefixes come from `random.Random(f"brackets:{seed}")`: `depth` brackets stay open, and up to three
already closed pairs are mixed in. Brackets are written space-separated so each is one token. After a
header of complete balanced sequences the model continues the prefix; the correct continuation is the
closing sequence followed by a newline.

- Greedy exact match (the score): greedy decoding reproduces the closing sequence and its newline,
  read off one teacher-forced pass (every token is the argmax given the ones before it, which is
  exactly when greedy decoding emits that sequence).
- Log-likelihood (in details): the correct closing must outscore three corrupted closings of the same
  length (a bracket of the wrong type, or two brackets swapped); chance is 1/4.
Layer pruning is known to break this skill.
"""

from __future__ import annotations

import random
from typing import Sequence

from workbench.probes import EXACT_MATCH_FLIPS, PROBES, Probe, ProbeContext, right_or_wrong
from workbench.probes._generate import encode, score_choices

PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}
CLOSERS = tuple(PAIRS.values())
DEPTHS = {"quick": (1, 2, 3, 4), "full": (1, 2, 3, 4, 5, 6, 7, 8)}
PER_DEPTH = {"quick": 6, "full": 25}
DISTRACTORS = 3
HEADER = "Balanced bracket sequences:\n( [ ] )\n{ < > ( ) }\n[ ( ) < { } > ]\n< >\n( { [ ] } )\n"


def closing(prefix: Sequence[str]) -> list[str]:
    """The brackets that close `prefix`, innermost first; ValueError if `prefix` closes wrongly."""
    stack: list[str] = []
    for bracket in prefix:
        if bracket in PAIRS:
            stack.append(bracket)
        elif bracket in CLOSERS:
            if not stack or PAIRS[stack.pop()] != bracket:
                raise ValueError(f"unbalanced prefix: {' '.join(prefix)}")
        else:
            raise ValueError(f"not a bracket: {bracket!r}")
    return [PAIRS[b] for b in reversed(stack)]


def make_prefix(rng: random.Random, depth: int, closed_pairs: int) -> list[str]:
    """A random prefix that leaves `depth` brackets open and contains `closed_pairs` closed pairs."""
    opens, closes, stack, out = depth + closed_pairs, closed_pairs, [], []
    while opens or closes:
        if opens and (not stack or not closes or rng.random() < 0.5):
            stack.append(rng.choice(tuple(PAIRS)))
            out.append(stack[-1])
            opens -= 1
        else:
            out.append(PAIRS[stack.pop()])
            closes -= 1
    return out


def corruptions(rng: random.Random, correct: Sequence[str], count: int = DISTRACTORS) -> list[list[str]]:
    """`count` distinct wrong closings of the same length: one bracket of another type, or two swapped."""
    out: list[list[str]] = []
    while len(out) < count:
        wrong = list(correct)
        if len(set(wrong)) > 1 and rng.random() < 0.5:
            i, j = rng.sample(range(len(wrong)), 2)
            wrong[i], wrong[j] = wrong[j], wrong[i]
        else:
            i = rng.randrange(len(wrong))
            wrong[i] = rng.choice([c for c in CLOSERS if c != wrong[i]])
        if wrong != list(correct) and wrong not in out:
            out.append(wrong)
    return out


def make_items(seed: int, depths: Sequence[int], per_depth: int) -> list[tuple[list[str], list[list[str]]]]:
    """(prefix, [correct closing, corrupted closings...]) for every depth, reproducible from `seed`."""
    rng = random.Random(f"brackets:{seed}")
    items = []
    for depth in depths:
        for _ in range(per_depth):
            prefix = make_prefix(rng, depth, rng.randint(0, 3))
            correct = closing(prefix)
            items.append((prefix, [correct, *corruptions(rng, correct)]))
    return items


@PROBES.register("brackets")
class Brackets(Probe):
    """Greedy exact-match accuracy of the closing sequence; the floor is 0 (log-likelihood chance 1/4)."""

    name = "brackets"
    metric = "exact match"
    higher_is_better = True
    tolerance_items = EXACT_MATCH_FLIPS
    floor = 0.0

    def measure(self, ctx: ProbeContext, size: str):
        items = make_items(ctx.seed, DEPTHS[size], PER_DEPTH[size])
        encoded = [
            (encode(ctx.tokenizer, HEADER + " ".join(prefix)), [encode(ctx.tokenizer, f" {' '.join(c)}\n") for c in choices])
            for prefix, choices in items
        ]
        scores = score_choices(ctx.model, ctx.tokenizer, encoded, ctx.device, cancel=ctx.check_cancel)
        greedy = [s[0].greedy for s in scores]
        best = [max(range(len(s)), key=lambda i: s[i].logprob) == 0 for s in scores]
        by_depth: dict[str, dict[str, list[bool]]] = {}
        for (prefix, choices), g, b in zip(items, greedy, best):
            cell = by_depth.setdefault(str(len(choices[0])), {"greedy": [], "loglik": []})
            cell["greedy"].append(g)
            cell["loglik"].append(b)
        details = {
            "loglik_accuracy": sum(best) / len(items),
            "loglik_floor": 1 / (DISTRACTORS + 1),
            "by_depth": {d: {k: sum(v) / len(v) for k, v in cell.items()} for d, cell in by_depth.items()},
        }
        return sum(greedy) / len(items), len(items), details, right_or_wrong(greedy)
