"""Budget forcing: batched greedy thinking under thinking-token budgets, then a forced short answer.

Every problem starts as one row that thinks greedily. Thinking tokens are counted (the model's own and any
`Wait` written for it; the end-of-thinking text is not). When a row reaches a budget while still thinking
it forks: a copy of its key/value cache row gets the forced end of thinking and answers for that budget,
while the row thinks on towards the next budget. So the budgets share one generation: a longer budget
continues the shorter one's thinking, and each costs only its forced answer. At the last budget the row
itself is forced. A row that ends its thinking by itself (the style's end text, or end of sequence) answers
once for every budget it has not reached.

The "Wait" extension takes the model's end of thinking back and writes `Wait,` instead. Taking back tokens
already in the cache is done per row by hiding their columns from the attention mask and reusing their
positions, so every row sees exactly the sequence it would see alone. Padding and the shared prompt prefix
work as in `workbench.probes._generate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from workbench.probes._generate import BATCH, Rows, _pad_id, _prefix_state, common_prefix_length, encode
from workbench.probes.reasoning.thinking import EXTEND, Style


@dataclass
class Outcome:
    """One problem at one budget: thinking tokens used, whether the budget ended the thinking, the texts
    and the token ids of the thinking and of the answer (after the forced text)."""

    tokens: int
    hit_budget: bool
    thinking: str
    answer: str
    think_ids: list[int]
    answer_ids: list[int]


@dataclass
class _Row:
    problem: int
    budgets: list[int]  # the budgets this row answers for (thinking: those not yet reached)
    waits: int
    think: list[int] = field(default_factory=list)
    queue: list[int] = field(default_factory=list)  # tokens to write for the model, in order
    answer: list[int] | None = None  # None while thinking
    used: int = 0  # thinking tokens, fixed when the answer starts
    hit: bool = False

    def fork(self) -> "_Row":
        return _Row(self.problem, [self.budgets.pop(0)], self.waits, list(self.think))


class Forcer:
    """Runs budget forcing for one style; `answer_tokens` bounds each answer, `waits` the Wait extensions."""

    def __init__(self, model, tokenizer, style: Style, budgets: Sequence[int], answer_tokens: int, waits: int,
                 device: torch.device, cancel: Callable[[], None] | None = None, batch_size: int = BATCH // 2):
        self.model, self.tokenizer, self.style, self.device = model, tokenizer, style, device
        self.budgets, self.answer_tokens, self.waits = sorted(budgets), answer_tokens, waits
        self.cancel, self.batch_size = cancel, batch_size
        self.force, self.after_end, self.extend = (encode(tokenizer, t) for t in (style.force, style.after_end, EXTEND))
        self.span = len(encode(tokenizer, style.end)) + 2  # tokens searched for the end text
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}

    def run(self, prompts: Sequence[Sequence[int]]) -> list[dict[int, Outcome]]:
        """Each prompt's outcome at every budget."""
        shared = common_prefix_length(prompts)
        state = _prefix_state(self.model, prompts[0][:shared], self.device)
        outcomes: list[dict[int, Outcome]] = [{} for _ in prompts]
        for start in range(0, len(prompts), self.batch_size):
            tails = [list(p[shared:]) for p in prompts[start : start + self.batch_size]]
            self._batch(state, shared, tails, start, outcomes)
        return outcomes

    def _batch(self, state, shared: int, tails: list[list[int]], first: int, outcomes) -> None:
        decoding = Rows(self.model, state, shared, tails, _pad_id(self.tokenizer), self.device)
        rows = [_Row(first + i, list(self.budgets), self.waits) for i in range(len(tails))]
        while rows:
            if self.cancel is not None:
                self.cancel()
            choices = decoding.choices()
            keep, feed = [], []  # (source row, row, tokens it takes back), and the token it feeds next
            for i, (row, choice) in enumerate(zip(rows, choices)):
                if row.answer is None and len(row.think) >= row.budgets[0] and len(row.budgets) > 1:
                    fork = row.fork()
                    self._start_answer(fork, len(fork.think), hit=True, queue=self.force)
                    keep.append((i, fork, 0))
                    feed.append(fork.queue.pop(0))
                token, back = self._next(row, choice)
                if token is None:
                    self._finish(row, outcomes)
                    continue
                keep.append((i, row, back))
                feed.append(token)
            if not keep:
                break
            decoding.select([i for i, _, _ in keep])
            for k, (_, _, back) in enumerate(keep):
                if back:
                    decoding.take_back(k, back)
            rows = [row for _, row, _ in keep]
            decoding.feed(feed)

    def _start_answer(self, row: _Row, used: int, hit: bool, queue: list[int]) -> None:
        row.used, row.hit, row.answer, row.queue = used, hit, [], list(queue)

    def _next(self, row: _Row, choice: int) -> tuple[int | None, int]:
        """The token `row` feeds next (None: the row is done) and how many of its cache columns to take back."""
        if row.answer is not None:
            return self._next_answer(row, choice), 0
        if len(row.think) >= row.budgets[0]:  # the last budget: force the answer
            self._start_answer(row, len(row.think), hit=True, queue=self.force)
            return row.queue.pop(0), 0
        if row.queue:
            row.think.append(row.queue.pop(0))
            return row.think[-1], 0
        if choice in self.eos:
            return self._ended(row, len(row.think), self.force, choice=None)
        row.think.append(choice)
        span = self._end_span(row.think)
        if span:
            return self._ended(row, len(row.think) - span, self.after_end, choice=choice)
        return choice, 0

    def _ended(self, row: _Row, used: int, then: list[int], choice: int | None) -> tuple[int, int]:
        """The model closed its thinking (end text ending with `choice`, or end of sequence when None)."""
        if row.waits > 0:  # take the end back and write Wait instead
            row.waits -= 1
            back = len(row.think) - used - (choice is not None)  # columns of the end text already in the cache
            del row.think[used:]
            row.queue = list(self.extend)
            row.think.append(row.queue.pop(0))
            return row.think[-1], back
        self._start_answer(row, used, hit=False, queue=then)
        if choice is not None:
            return choice, 0
        return row.queue.pop(0), 0

    def _next_answer(self, row: _Row, choice: int) -> int | None:
        if row.queue:
            return row.queue.pop(0)
        if choice in self.eos:
            return None
        row.answer.append(choice)
        text = self.tokenizer.decode(row.answer, skip_special_tokens=True)
        if len(row.answer) >= self.answer_tokens or "\n" in text.lstrip():
            return None
        return choice

    def _end_span(self, think: list[int]) -> int:
        """How many of the last thinking tokens spell the style's end text (0: it is not there)."""
        end = self.style.end.lower()
        tail = think[-self.span :]
        if end not in self.tokenizer.decode(tail, skip_special_tokens=False).lower():
            return 0
        return next(j for j in range(1, len(tail) + 1)
                    if end in self.tokenizer.decode(tail[-j:], skip_special_tokens=False).lower())

    def _finish(self, row: _Row, outcomes) -> None:
        thinking = self.tokenizer.decode(row.think[: row.used], skip_special_tokens=True)
        answer = self.tokenizer.decode(row.answer or [], skip_special_tokens=True)
        for budget in row.budgets:
            outcomes[row.problem][budget] = Outcome(row.used, row.hit, thinking, answer, row.think[: row.used],
                                                    list(row.answer or []))
