"""How a model is asked to think: its chat template's own thinking mode, or a fallback instruction.

`template`: the chat template renders `enable_thinking` (Qwen3 and its kin): the prompt is the template's
with thinking on, followed by the opening `<think>` when the template does not write it itself; thinking
ends when the model writes `</think>`. `fallback`: the problem is followed by an instruction to think
step by step and then write `Final answer: <number>`; thinking ends when the model writes `Final answer:`.
`auto` takes `template` where the template has a thinking mode, else `fallback` (the embedded SmolLM2
has none). The end of thinking can also be the end-of-sequence token.

At the budget (or when the model ends its turn while thinking) the answer is forced, as s1's budget
forcing does: the end of thinking is written for the model, then `Final answer:`, and the model answers
in a few tokens. With s1's "Wait" extension the model's own end of thinking is taken back and `Wait` is
written instead, up to a set number of times per problem.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.infra.errors import WorkbenchError

MODES = ("auto", "template", "fallback")
ANSWER = "Final answer:"
INSTRUCTION = f"Solve it step by step. At the end, write the line: {ANSWER} <number>"
EXTEND = "\nWait,"


def has_thinking_mode(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a thinking switch (`enable_thinking`)."""
    return "enable_thinking" in (getattr(tokenizer, "chat_template", None) or "")


@dataclass(frozen=True)
class Style:
    """One way of asking: `end` is the text that closes thinking, `force` what is written to force the
    answer (after the thinking so far), `after_end` what is written when the model closed thinking itself."""

    mode: str  # template | fallback
    end: str
    force: str
    after_end: str

    def prompt(self, tokenizer, question: str) -> str:
        """The prompt text: one user turn, the assistant's turn opened, thinking begun."""
        if self.mode == "fallback":
            message = f"{question}\n{INSTRUCTION}"
            if getattr(tokenizer, "chat_template", None):
                return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                     add_generation_prompt=True)
            return f"{message}\n"
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=True)
        return text if text.rstrip().endswith("<think>") else f"{text}<think>\n"


def style_for(tokenizer, mode: str) -> Style:
    """The style of `mode` for this tokenizer; `template` on a template without thinking is refused."""
    if mode not in MODES:
        raise WorkbenchError("--thinking", f"unknown thinking mode {mode!r} (use {', '.join(MODES)})")
    template = has_thinking_mode(tokenizer)
    if mode == "template" and not template:
        raise WorkbenchError("--thinking", "template: this model's chat template has no thinking mode "
                                           "(no enable_thinking); use auto or fallback")
    if mode == "template" or (mode == "auto" and template):
        return Style("template", "</think>", f"\n</think>\n\n{ANSWER}", f"\n\n{ANSWER}")
    return Style("fallback", ANSWER, f"\n{ANSWER}", "")
