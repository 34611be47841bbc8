"""Facts probe: recall of well-known facts (capitals, chemical symbols, authors, years, languages,
currencies, continents, planets, famous people) from the hand-written set in `facts.toml`.

Each fact is asked as "Q: ...?\\nA:" after a four-line few-shot header, and scored two ways in one
batched pass:
- Greedy exact match (the score): greedy decoding answers exactly " answer" and ends the line,
  read off one teacher-forced pass (every token of " answer\\n" is the argmax given the ones before).
- Log-likelihood (in details): " answer\\n" outscores three distractors, which are other answers
  of the same category drawn with `random.Random(f"facts:{seed}:...")`; chance is 1/4.
The quick size asks every eighth fact of the file, the full size all of them. Unstructured pruning
and width pruning are reported to cost factual knowledge first.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from workbench.infra.errors import WorkbenchError
from workbench.probes import EXACT_MATCH_FLIPS, PROBES, Probe, ProbeContext, right_or_wrong
from workbench.probes._generate import encode, score_choices

QUICK_EVERY = 8
DISTRACTORS = 3
HEADER = (
    "Q: What is the capital of Switzerland?\nA: Bern\n"
    "Q: What is the chemical symbol of argon?\nA: Ar\n"
    "Q: Who wrote Jane Eyre?\nA: Charlotte Bronte\n"
    "Q: In what year did the Apollo 13 mission launch?\nA: 1970\n"
)


@dataclass(frozen=True)
class Fact:
    """One question with its answer and the category its distractors come from."""

    category: str
    question: str
    answer: str


@lru_cache(maxsize=1)
def load_facts() -> tuple[Fact, ...]:
    """Every fact of `facts.toml`, in file order."""
    text = resources.files("workbench.probes").joinpath("facts.toml").read_text(encoding="utf-8")
    facts = []
    for category, table in tomllib.loads(text).items():
        template = table.get("question", "")
        if "{}" not in template or not table.get("facts"):
            raise WorkbenchError(f"facts.toml: {category}", "needs a question template with {} and a facts list")
        for subject, answer in table["facts"]:
            facts.append(Fact(category, template.format(subject), answer))
    return tuple(facts)


def distractors(facts: tuple[Fact, ...], fact: Fact, seed: int, count: int = DISTRACTORS) -> list[str]:
    """`count` other answers of the fact's category, reproducible from `seed`."""
    pool = sorted({f.answer for f in facts if f.category == fact.category} - {fact.answer})
    return random.Random(f"facts:{seed}:{fact.category}:{fact.question}").sample(pool, count)


def select(facts: tuple[Fact, ...], size: str) -> tuple[Fact, ...]:
    """The facts a size asks: every `QUICK_EVERY`-th one for quick, all for full."""
    return facts[::QUICK_EVERY] if size == "quick" else facts


@PROBES.register("facts")
class Facts(Probe):
    """Greedy exact-match accuracy of the answers; the floor is 0 (log-likelihood chance 1/4)."""

    name = "facts"
    metric = "exact match"
    higher_is_better = True
    tolerance_items = EXACT_MATCH_FLIPS
    floor = 0.0

    def measure(self, ctx: ProbeContext, size: str):
        facts = load_facts()
        asked = select(facts, size)
        items = []
        for fact in asked:
            choices = [fact.answer, *distractors(facts, fact, ctx.seed)]
            context = encode(ctx.tokenizer, f"{HEADER}Q: {fact.question}\nA:")
            items.append((context, [encode(ctx.tokenizer, f" {c}\n") for c in choices]))
        scores = score_choices(ctx.model, ctx.tokenizer, items, ctx.device, cancel=ctx.check_cancel)
        greedy = [s[0].greedy for s in scores]
        best = [max(range(len(s)), key=lambda i: s[i].logprob) == 0 for s in scores]
        by_category: dict[str, dict[str, list[bool]]] = {}
        for fact, g, b in zip(asked, greedy, best):
            cell = by_category.setdefault(fact.category, {"greedy": [], "loglik": []})
            cell["greedy"].append(g)
            cell["loglik"].append(b)
        details = {
            "loglik_accuracy": sum(best) / len(asked),
            "loglik_floor": 1 / (DISTRACTORS + 1),
            "by_category": {c: {k: sum(v) / len(v) for k, v in cell.items()} for c, cell in by_category.items()},
        }
        return sum(greedy) / len(asked), len(asked), details, right_or_wrong(greedy)
