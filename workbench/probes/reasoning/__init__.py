"""Reasoning probe: verifiable multi-step problems answered after thinking under a token budget.

Each problem (`problems`: seeded generators in four levels, and a hand-written set) is one user turn through
the chat template with thinking on (`thinking`: the template's own mode, or a step-by-step instruction
with an end marker). Thinking runs greedily under each budget of the size (quick 64 and 128 tokens, full
256 and 1024); at the budget the answer is forced (`forcing`, s1's budget forcing, with its "Wait" extension
as an option), and the answer is checked by rule (`checker`). The budgets share one generation: the
longer continues the shorter's thinking.

The score is the accuracy at the largest budget (its per-item units give intervals and flips as for the
other exact-match probes); details hold, per budget, the accuracy, the mean and 90th percentile of thinking
tokens used, the share of problems that hit the budget, and answers per second; units `accuracy@B` and
`tokens@B` give intervals on each budget's accuracy and thinking length. Pruned reasoning models are
reported to think longer (RAC, arXiv 2509.12464), which the tokens show.
"""

from __future__ import annotations

import math
import time

from workbench.infra.errors import WorkbenchError
from workbench.infra.params import Param
from workbench.probes import EXACT_MATCH_FLIPS, PROBES, Probe, ProbeContext, Units, right_or_wrong
from workbench.probes._generate import encode
from workbench.probes.reasoning.checker import is_right
from workbench.probes.reasoning.forcing import Forcer
from workbench.probes.reasoning.problems import SETS, evaluation_problems
from workbench.probes.reasoning.thinking import MODES, style_for

BUDGETS = {"quick": (64, 128), "full": (256, 1024)}
EXAMPLES = 4


def budgets_of(text: str, size: str) -> tuple[int, ...]:
    """The budgets of a `budgets` option ("64,128"; empty: the size's), ascending; one error naming a bad one."""
    if not text.strip():
        return BUDGETS[size]
    budgets = []
    for part in text.split(","):
        try:
            budget = int(part)
        except ValueError:
            raise WorkbenchError("reasoning.budgets", f"not a whole number: {part.strip()!r}") from None
        if budget < 1:
            raise WorkbenchError("reasoning.budgets", f"budget {budget}: a thinking budget must be >= 1 token")
        budgets.append(budget)
    return tuple(sorted(set(budgets)))


def p90(values: list[int]) -> float:
    """The 90th percentile (nearest rank)."""
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)])


@PROBES.register("reasoning")
class Reasoning(Probe):
    """Accuracy at the largest thinking budget; the floor is 0."""

    name = "reasoning"
    metric = "exact match"
    higher_is_better = True
    tolerance_items = EXACT_MATCH_FLIPS
    floor = 0.0
    opt_in = True  # tens of seconds on a CPU: not in the app's default runs
    options = (
        Param("thinking", "auto", "auto: the chat template's thinking mode where it has one, else a "
                                  "step-by-step instruction (fallback); template: refuse a template without one",
              choices=MODES),
        Param("budgets", "", "thinking-token budgets, comma-separated (empty: 64,128 quick, 256,1024 full)"),
        Param("wait", 0, "times the model's own end of thinking is replaced by 'Wait' (s1)", low=0, whole=True),
        Param("answer_tokens", 12, "tokens allowed for the forced answer", low=1, whole=True),
        Param("problem_set", "standard", "standard (generated, plus the hand-written set at full size), "
                                         "generated or handwritten", choices=SETS),
    )

    @classmethod
    def check_options(cls, values: dict) -> None:
        budgets_of(values["budgets"], "quick")

    def measure(self, ctx: ProbeContext, size: str):
        settings = self.settings(ctx)
        budgets = budgets_of(settings["budgets"], size)
        style = style_for(ctx.tokenizer, settings["thinking"])
        problems = evaluation_problems(settings["problem_set"], size, ctx.seed)
        prompts = [encode(ctx.tokenizer, style.prompt(ctx.tokenizer, p.question)) for p in problems]
        start = time.perf_counter()
        outcomes = Forcer(ctx.model, ctx.tokenizer, style, budgets, settings["answer_tokens"], settings["wait"],
                          ctx.device, ctx.check_cancel).run(prompts)
        seconds = time.perf_counter() - start
        per_budget, units = {}, {}
        for b in budgets:
            right = [is_right(o[b].answer, p.answer) for p, o in zip(problems, outcomes)]
            tokens = [o[b].tokens for o in outcomes]
            per_budget[str(b)] = {"accuracy": sum(right) / len(right), "correct": sum(right),
                                  "mean_tokens": sum(tokens) / len(tokens), "p90_tokens": p90(tokens),
                                  "hit_budget": sum(o[b].hit_budget for o in outcomes) / len(outcomes)}
            units[f"accuracy@{b}"] = right_or_wrong(right)["score"]
            units[f"tokens@{b}"] = Units([float(t) for t in tokens])
        last = budgets[-1]
        right = [is_right(o[last].answer, p.answer) for p, o in zip(problems, outcomes)]
        levels: dict[str, list[bool]] = {}
        for p, ok in zip(problems, right):
            levels.setdefault(f"level {p.level}" if p.level else "hand-written", []).append(ok)
        details = {
            "thinking": style.mode,
            "budgets": per_budget,
            "levels": {name: sum(oks) / len(oks) for name, oks in levels.items()},
            "answers_per_second": len(problems) * len(budgets) / seconds if seconds > 0 else 0.0,
            "examples": [f"{p.question} | {o[last].thinking[-80:]!r} -> {o[last].answer.strip()!r} (true {p.answer})"
                         for p, o in list(zip(problems, outcomes))[:: max(1, len(problems) // EXAMPLES)]],
        }
        return sum(right) / len(right), len(problems), details, {**right_or_wrong(right), **units}
