"""The reasoning probe's answer rule: the number a reply gives as its answer, compared with the true one.

The reply checked is what the model wrote after `Final answer:` (forced or its own). Its answer is the
number in `\\boxed{...}` when there is one, else the first number of the reply (so "12 apples, 3 left"
answers 12). A number may carry a sign, thousands separators and a decimal part; it is right only when
it equals the integer answer exactly (7.0 is 7, 7.5 is not). A reply without a number is wrong.
"""

from __future__ import annotations

import re

NUMBER = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?"


def answer_of(reply: str) -> float | None:
    """The number `reply` gives as its answer, or None."""
    boxed = re.findall(rf"\\boxed\{{\s*\$?({NUMBER})\s*\}}", reply)
    if boxed:
        return float(boxed[-1].replace(",", ""))
    match = re.search(NUMBER, reply)
    return float(match.group().replace(",", "")) if match else None


def is_right(reply: str, answer: int) -> bool:
    """Whether `reply` answers exactly `answer`."""
    given = answer_of(reply)
    return given is not None and given == answer
