"""Batched greedy generation and multiple-choice log-likelihood scoring shared by the probes.

Both functions work on token-id lists and find the longest token prefix that all prompts share (a
few-shot header, a chat template's system turn). That prefix runs once with batch size 1 and its
key/value cache is broadcast to every batch, so the per-item work is only the item's own tokens.

Padding sits between the shared prefix and an item's own tokens. Explicit position ids count real
tokens only and the attention mask hides the padding, so every sequence sees exactly the positions
and attention it would see alone (the tests check this against unbatched, uncached decoding).
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

BATCH = 32  # sequences per forward pass
State = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) of the shared prefix


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_prompt(tokenizer, message: str) -> str:
    """`message` as one user turn in the tokenizer's chat template, ready for the assistant's reply.

    Tokenizers without a template (base models, the test tokenizer) get the message unchanged.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )
    return message


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix shared by all `seqs`, leaving at least one token of the shortest."""
    limit = min(len(s) for s in seqs) - 1
    n = 0
    while n < limit and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n


def cached(module, cache) -> dict:
    """The keyword that hands `module` its key/value cache: `cache` in transformers >= 5.24 (which warns on
    the old name), `past_key_values` before."""
    return {_cache_keyword(type(module)): cache}


@functools.cache
def _cache_keyword(cls: type) -> str:
    """`cached`'s keyword for a model class, looked up once per class (not once per generated token)."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _prefix_state(model, prefix: Sequence[int], device: torch.device) -> State:
    """Key/value states of every layer after running `prefix` alone (empty for no prefix)."""
    if not prefix:
        return []
    cache = DynamicCache()
    model(torch.tensor([list(prefix)], device=device), **cached(model, cache), use_cache=True, logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache(state: State, rows: int) -> DynamicCache:
    """A fresh cache holding the shared-prefix state broadcast to `rows` rows."""
    return DynamicCache([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in state])


def _pad(tails: Sequence[Sequence[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists to one width (on the left or the right); return ids and the 0/1 mask."""
    width = max(len(t) for t in tails)
    ids = torch.full((len(tails), width), pad, dtype=torch.long)
    mask = torch.zeros((len(tails), width), dtype=torch.long)
    for row, tail in enumerate(tails):
        cols = slice(width - len(tail), width) if left else slice(0, len(tail))
        ids[row, cols] = torch.tensor(tail, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else tokenizer.eos_token_id


# ----- generation --------------------------------------------------------------------------------
def greedy_generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    device: torch.device,
    stop: Sequence[str] = (),
    stop_at_eos: bool = True,
    cancel: Callable[[], None] | None = None,
    batch_size: int = BATCH,
) -> list[str]:
    """Greedy continuations of the token-id `prompts`, decoded, each cut before its first `stop` string.

    A sequence ends at the end-of-sequence token (unless `stop_at_eos` is False), at a stop string or
    after `max_new_tokens`; finished rows leave the batch. `cancel()` runs before every step.
    """
    shared = common_prefix_length(prompts)
    state = _prefix_state(model, prompts[0][:shared], device)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        tails = [list(p[shared:]) for p in prompts[start : start + batch_size]]
        texts += _generate_batch(model, tokenizer, state, shared, tails, max_new_tokens, device, stop, stop_at_eos, cancel)
    return texts


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to its first stop string, and whether one occurred."""
    hits = [text.index(s) for s in stop if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


class Rows:
    """Batched greedy decoding of rows that share a cached prompt prefix (`state`, `shared` tokens) and go on
    with their own tokens (`tails`, left-padded): the key/value cache, the attention mask and each row's
    next position. Every step feeds one token per row; rows can be dropped or repeated (a fork copies a
    row's cache) and can take back their last tokens (their columns hidden from the mask, their positions
    reused), so each row sees exactly the sequence it would see alone."""

    def __init__(self, model, state: State, shared: int, tails: Sequence[Sequence[int]], pad: int, device: torch.device):
        ids, tail_mask = _pad(tails, pad, left=True)
        self.model, self.device = model, device
        self.mask = torch.cat([torch.ones((len(tails), shared), dtype=torch.long), tail_mask], dim=1).to(device)
        self.positions = ((self.mask.cumsum(1) - 1).clamp(min=0)[:, shared:]).to(device)
        self.cache, self.ids = _cache(state, len(tails)), ids.to(device)
        self.next = [shared + len(t) for t in tails]  # the position of each row's next token

    def choices(self) -> list[int]:
        """Each row's greedy next token."""
        logits = self.model(self.ids, attention_mask=self.mask, position_ids=self.positions,
                            **cached(self.model, self.cache), use_cache=True, logits_to_keep=1).logits
        return logits[:, -1].argmax(-1).tolist()

    def select(self, rows: list[int]) -> None:
        """Keep these rows, in this order (a row may repeat)."""
        if rows != list(range(len(self.next))):
            index = torch.tensor(rows, device=self.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask[index]
            self.next = [self.next[r] for r in rows]

    def take_back(self, row: int, count: int) -> None:
        """Hide the last `count` tokens of `row` (its next tokens take their positions)."""
        self.mask[row, -count:] = 0
        self.next[row] -= count

    def feed(self, tokens: list[int]) -> None:
        """The next token of every row (after `select`)."""
        self.ids = torch.tensor(tokens, device=self.device)[:, None]
        self.mask = torch.cat([self.mask, torch.ones((len(tokens), 1), dtype=self.mask.dtype, device=self.device)], dim=1)
        self.positions = torch.tensor(self.next, device=self.device)[:, None]
        self.next = [p + 1 for p in self.next]


def _generate_batch(model, tokenizer, state, shared, tails, max_new_tokens, device, stop, stop_at_eos, cancel) -> list[str]:
    rows = Rows(model, state, shared, tails, _pad_id(tokenizer), device)
    generated: list[list[int]] = [[] for _ in tails]
    texts = [""] * len(tails)
    active = list(range(len(tails)))  # original row of each row still in the batch
    for _ in range(max_new_tokens):
        if cancel is not None:
            cancel()
        next_ids = rows.choices()
        keep = []
        for i, row in enumerate(active):
            token = next_ids[i]
            if stop_at_eos and token == tokenizer.eos_token_id:
                continue
            generated[row].append(token)
            texts[row], stopped = cut_at_stop(tokenizer.decode(generated[row], skip_special_tokens=True), stop)
            if not stopped:
                keep.append(i)
        if not keep:
            break
        rows.select(keep)
        rows.feed([next_ids[i] for i in keep])
        active = [active[i] for i in keep]
    return texts


# ----- multiple-choice scoring ---------------------------------------------------------------------
@dataclass
class ChoiceScore:
    """Log-likelihood of one choice given its context."""

    logprob: float  # summed over the choice's tokens (nats)
    tokens: int
    greedy: bool  # every token is the argmax given the ones before it: greedy decoding produces this choice


def score_choices(
    model,
    tokenizer,
    items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    device: torch.device,
    cancel: Callable[[], None] | None = None,
    batch_size: int = 2 * BATCH,
) -> list[list[ChoiceScore]]:
    """Score the choices of each (context ids, [choice ids, ...]) item; one list of scores per item.

    Each context runs once; its cache is repeated for its choices, which then run side by side (at
    most `batch_size` choices per pass, items of similar length together to save padding).
    `greedy` is exact: greedy decoding from the context reproduces a choice token for token if and
    only if each of its tokens is the argmax given the ones before it.
    """
    if any(not c or not chs or not all(chs) for c, chs in items):
        raise ValueError("every item needs a non-empty context and non-empty choices")
    contexts = [list(c) for c, _ in items]
    shared = common_prefix_length(contexts)
    state = _prefix_state(model, contexts[0][:shared], device)
    order = sorted(range(len(items)), key=lambda i: (max(len(ch) for ch in items[i][1]), len(contexts[i])))
    out: dict[int, list[ChoiceScore]] = {}
    start = 0
    while start < len(order):
        if cancel is not None:
            cancel()
        end, rows = start, 0
        while end < len(order) and (end == start or rows + len(items[order[end]][1]) <= batch_size):
            rows += len(items[order[end]][1])
            end += 1
        batch = order[start:end]
        out.update(zip(batch, _score_batch(model, tokenizer, state, shared, [items[i] for i in batch], device)))
        start = end
    return [out[i] for i in range(len(items))]


CALL_TOKENS = 30  # one extra forward call costs about as much as this many more tokens (weight reads)


def length_groups(widths: Sequence[int]) -> list[list[int]]:
    """Indices of the non-zero `widths`, split into runs of similar width that minimise padded tokens plus
    `CALL_TOKENS` per run (each run is one forward call padded to its widest); shortest first."""
    order = sorted((w, i) for i, w in enumerate(widths) if w > 0)
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cost of the first j widths
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last run is order[i:j], padded to order[j - 1]'s width
            cost = best[i] + CALL_TOKENS + (j - i) * order[j - 1][0]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append([index for _, index in order[cut[j] : j]])
        j = cut[j]
    return groups[::-1]


def _select(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding the given rows of `cache` (a row may repeat)."""
    return DynamicCache([(layer.keys[rows], layer.values[rows]) for layer in cache.layers])


def _score_batch(model, tokenizer, state, shared, items, device) -> list[list[ChoiceScore]]:
    pad = _pad_id(tokenizer)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    # Stage 1: every context once (after the shared prefix); its last state predicts each choice's first token.
    ids, ctx_mask = _pad([list(c[shared:]) for c, _ in items], pad, left=False)
    mask = torch.cat([torch.ones((len(items), shared), dtype=torch.long), ctx_mask], dim=1)
    lengths = ctx_mask.sum(1)
    positions = shared + torch.arange(ids.shape[1]).expand(len(items), -1)
    cache = _cache(state, len(items))
    hidden = decoder(ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                     **cached(decoder, cache), use_cache=True).last_hidden_state
    last = hidden[torch.arange(len(items)), lengths - 1]  # (items, hidden)
    # Stage 2: feed every choice but its last token on a copy of its context's cache; those states predict
    # the choice's later tokens. Choices run in groups of similar length (`length_groups`) to save padding.
    counts = torch.tensor([len(choices) for _, choices in items])
    choices = [list(ch) for _, chs in items for ch in chs]
    row_of = torch.repeat_interleave(torch.arange(len(items)), counts)
    later: dict[int, torch.Tensor] = {}  # choice -> states predicting its tokens 1..
    for group in length_groups([len(ch) - 1 for ch in choices]):
        rows = row_of[group]
        ch_ids, ch_mask = _pad([choices[c][:-1] for c in group], pad, left=False)
        positions2 = (shared + lengths[rows])[:, None] + torch.arange(ch_ids.shape[1])
        hidden2 = decoder(ch_ids.to(device), attention_mask=torch.cat([mask[rows], ch_mask], dim=1).to(device),
                          position_ids=positions2.to(device), **cached(decoder, _select(cache, rows.to(device))),
                          use_cache=True).last_hidden_state
        later.update({c: hidden2[i, : len(choices[c]) - 1] for i, c in enumerate(group)})
    states = [last[row_of]] + [later[c] for c in sorted(later)]  # predicts token 0 of every choice, then the rest
    targets = [ch[0] for ch in choices] + [t for ch in choices for t in ch[1:]]
    owner = list(range(len(choices))) + [r for r, ch in enumerate(choices) for _ in ch[1:]]
    logprobs = torch.log_softmax(head(torch.cat(states)).float(), dim=-1)
    target = torch.tensor(targets, device=logprobs.device)
    picked = logprobs.gather(1, target[:, None])[:, 0].tolist()
    hits = (logprobs.argmax(-1) == target).tolist()
    logprob, greedy = [0.0] * len(choices), [True] * len(choices)
    for r, lp, hit in zip(owner, picked, hits):
        logprob[r] += lp
        greedy[r] = greedy[r] and hit
    scores = [ChoiceScore(logprob=logprob[r], tokens=len(ch), greedy=greedy[r]) for r, ch in enumerate(choices)]
    out, at = [], 0
    for count in counts.tolist():
        out.append(scores[at : at + count])
        at += count
    return out
