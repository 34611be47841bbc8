"""The reasoning probe: the answer rule on hand-written replies, seeded problem generators, budget forcing
on the tiny random Llama (budgets shared, forced answers, taken-back end of thinking) against uncached
decoding, the thinking modes and the one-line errors of its options."""

import pytest
import torch

from tests.tiny import tiny_llama
from workbench.infra.errors import WorkbenchError
from workbench.probes import ProbeContext, option_values, run_probes
from workbench.probes._generate import encode
from workbench.probes.reasoning import budgets_of, p90
from workbench.probes.reasoning.checker import answer_of, is_right
from workbench.probes.reasoning.forcing import Forcer
from workbench.probes.reasoning.problems import LEVELS, PER_LEVEL, evaluation_problems, generated, handwritten, training_problems
from workbench.probes.reasoning.thinking import has_thinking_mode, style_for

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=0)


# ----- the answer rule ---------------------------------------------------------------------------
@pytest.mark.parametrize("reply, answer, right", [
    (" 42", 42, True),
    (" 41", 42, False),
    (" I am not sure.", 42, False),
    ("", 42, False),
    (" 12 apples, and 3 are left", 12, True),  # several numbers: the first is the answer
    (" 12 apples, and 3 are left", 3, False),
    (" The total is \\boxed{30}, from 5 * 6", 30, True),  # a boxed number wins over the first
    (" 1,234", 1234, True),
    (" 7.0", 7, True),
    (" 7.5", 7, False),
    (" -3", -3, True),
])
def test_answer_rule(reply, answer, right):
    assert is_right(reply, answer) is right


def test_answer_of_no_number():
    assert answer_of(" none") is None


# ----- problems ----------------------------------------------------------------------------------
def test_generators_are_seeded_and_fixed():
    """The same problems on any machine (Python's seeded generator), pinned: a change of the generators
    changes every recorded score, so it must be deliberate."""
    assert [p.question for p in generated(0, 1)] == [
        "What is 1 + 6?", "What is 18 + 5?",
        "There are 8 bags with 3 stickers in each bag. How many stickers are there in all?",
        "Ana buys 5 boxes of 3 stamps and already had 15. How many stamps does Ana have in total?"]
    assert [p.answer for p in generated(0, 1)] == [7, 23, 24, 30]
    assert generated(0, 2) == generated(0, 2) != generated(1, 2)
    assert [p for p in generated(0, 4) if p.level == 1][:2] == [p for p in generated(0, 2) if p.level == 1]


def test_generated_answers_are_right():
    for p in generated(0, PER_LEVEL["full"]):
        assert p.answer >= 0 and p.level in LEVELS
        if p.question.startswith("What is "):
            assert eval(p.question[len("What is "):-1]) == p.answer
    assert len({p.question for p in generated(0, PER_LEVEL["full"])}) == PER_LEVEL["full"] * len(LEVELS)


def test_sets_and_sizes():
    assert len(evaluation_problems("standard", "quick", 0)) == 16
    assert len(evaluation_problems("standard", "full", 0)) == PER_LEVEL["full"] * 4 + len(handwritten())
    assert evaluation_problems("handwritten", "quick", 0) == list(handwritten())
    with pytest.raises(WorkbenchError, match="unknown problem set 'nope'"):
        evaluation_problems("nope", "quick", 0)


def test_training_problems_never_evaluate():
    train = training_problems(0, 200)
    held = {p.question for size in PER_LEVEL for p in evaluation_problems("standard", size, 0)}
    assert len(train) == 200 and not held & {p.question for p in train}
    assert train == training_problems(0, 200)


# ----- thinking modes ------------------------------------------------------------------------------
class TemplateTokenizer:
    """A tokenizer whose chat template has a thinking switch (as Qwen3's)."""

    chat_template = "{% if enable_thinking %}...{% endif %}"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, enable_thinking=None):
        assert enable_thinking is True
        return f"<|user|>{messages[0]['content']}<|assistant|>\n"


def test_thinking_modes(tiny):
    _, tokenizer = tiny
    assert not has_thinking_mode(tokenizer)
    assert style_for(tokenizer, "auto").mode == "fallback"
    with pytest.raises(WorkbenchError, match="--thinking: template: this model's chat template has no thinking mode"):
        style_for(tokenizer, "template")
    template = style_for(TemplateTokenizer(), "auto")
    assert template.mode == "template" and template.end == "</think>"
    assert template.prompt(TemplateTokenizer(), "What is 2 + 2?").endswith("<|assistant|>\n<think>\n")
    assert style_for(tokenizer, "fallback").prompt(tokenizer, "Q?").startswith("Q?\nSolve it step by step")


# ----- budget forcing ------------------------------------------------------------------------------
def argmax_path(model, ids: list[int]) -> list[int]:
    """Uncached greedy predictions after every prefix of `ids` (one pass, no padding, no cache)."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].argmax(-1).tolist()


def check_alone(model, prompt, style_force, outcome):
    """The forced answer and the thinking are what uncached decoding of the same sequence gives."""
    seq = prompt + outcome.think_ids + style_force + outcome.answer_ids
    predicted = argmax_path(model, seq)
    for i in range(len(prompt), len(prompt) + len(outcome.think_ids)):
        assert predicted[i - 1] == seq[i], f"thinking token {i - len(prompt)} is not the greedy one"
    start = len(prompt) + len(outcome.think_ids) + len(style_force)
    for i in range(start, len(seq)):
        assert predicted[i - 1] == seq[i], "answer token is not the greedy one"


def test_budgets_share_one_generation(tiny):
    model, tokenizer = tiny
    style = style_for(tokenizer, "fallback")
    prompts = [encode(tokenizer, style.prompt(tokenizer, q)) for q in ("What is 2 + 3?", "Ben has 4 apples.", "7 * 8?")]
    outcomes = Forcer(model, tokenizer, style, (8, 5, 13), 4, 0, CPU, batch_size=2).run(prompts)
    force = encode(tokenizer, style.force)
    for prompt, per_budget in zip(prompts, outcomes):
        assert sorted(per_budget) == [5, 8, 13]
        for budget, outcome in per_budget.items():
            if outcome.hit_budget:
                assert outcome.tokens == budget == len(outcome.think_ids)
                assert 1 <= len(outcome.answer_ids) <= 4
                check_alone(model, prompt, force, outcome)
        longest = per_budget[13].think_ids
        assert per_budget[5].think_ids == longest[: len(per_budget[5].think_ids)]  # the longer continues the shorter


class EndsAt(Forcer):
    """A Forcer whose model 'writes the end text' at a fixed thinking length: the last `span` tokens."""

    at, width = 6, 3

    def _end_span(self, think):
        return self.width if len(think) == self.at else 0


def test_wait_takes_the_end_back(tiny):
    """With one Wait, the end text (3 tokens, 2 in the cache) is hidden and `Wait,` written; the row then
    decodes exactly as the sequence without the end text would."""
    model, tokenizer = tiny
    style = style_for(tokenizer, "fallback")
    prompts = [encode(tokenizer, style.prompt(tokenizer, q)) for q in ("What is 2 + 3?", "Dara has 9 shells.")]
    plain = EndsAt(model, tokenizer, style, (12,), 3, 0, CPU).run(prompts)
    waited = EndsAt(model, tokenizer, style, (12,), 3, 1, CPU).run(prompts)
    extend = encode(tokenizer, "\nWait,")
    for prompt, p, w in zip(prompts, plain, waited):
        assert not p[12].hit_budget and p[12].tokens == EndsAt.at - EndsAt.width  # ended by itself
        think = w[12].think_ids
        assert w[12].hit_budget and w[12].tokens == 12
        kept = EndsAt.at - EndsAt.width
        assert think[:kept] == p[12].think_ids and think[kept : kept + len(extend)] == extend
        seq = prompt + think
        predicted = argmax_path(model, seq)
        for i in range(len(prompt) + kept + len(extend), len(seq)):
            assert predicted[i - 1] == seq[i]  # after Wait, decoding sees no trace of the taken-back tokens


def test_end_of_sequence_ends_thinking(tiny):
    """A model that ends its turn while thinking answers at once for every budget, not hitting any."""
    model, tokenizer = tiny

    class Ending(Forcer):
        def _next(self, row, choice):
            if row.answer is None and len(row.think) == 4 and not row.queue:
                choice = tokenizer.eos_token_id
            return super()._next(row, choice)

    style = style_for(tokenizer, "fallback")
    out = Ending(model, tokenizer, style, (8, 16), 3, 0, CPU).run([encode(tokenizer, style.prompt(tokenizer, "Q?"))])
    assert out[0][8].tokens == out[0][16].tokens == 4 and not out[0][8].hit_budget


# ----- the probe -----------------------------------------------------------------------------------
def test_probe_reports_per_budget(tiny):
    model, tokenizer = tiny
    ctx = ProbeContext(model, tokenizer, CPU, options={"reasoning": {"budgets": "4,6", "problem_set": "handwritten"}})
    result = run_probes(ctx, ["reasoning"], "quick")[0]
    assert result.items == len(handwritten())
    assert set(result.details["budgets"]) == {"4", "6"}
    for budget, row in result.details["budgets"].items():
        assert 0 <= row["hit_budget"] <= 1 and row["mean_tokens"] <= int(budget) and row["p90_tokens"] <= int(budget)
    assert result.units["score"].values == result.units["accuracy@6"].values
    assert result.details["options"]["budgets"] == "4,6"
    assert result.details["answers_per_second"] > 0


def test_option_errors():
    with pytest.raises(WorkbenchError, match="reasoning.budgets: budget 0"):
        option_values("reasoning", {"budgets": "64,0"})
    with pytest.raises(WorkbenchError, match="reasoning.budgets: not a whole number: 'x'"):
        option_values("reasoning", {"budgets": "x"})
    with pytest.raises(WorkbenchError, match="reasoning.problem_set"):
        option_values("reasoning", {"problem_set": "gsm"})
    assert budgets_of("", "full") == (256, 1024) and budgets_of("128, 64", "quick") == (64, 128)
    assert p90(list(range(1, 11))) == 9.0
