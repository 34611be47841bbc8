"""Self-generated calibration (`--calibration self[:N][:reasoning]`): windows of the dense model's own chat
replies instead of generic text, which preserves reasoning better after pruning (RAC, arXiv 2509.12464;
SSGR, arXiv 2511.18864).

Each window is a run of chat turns packed to `seqlen` tokens: a seeded user prompt through the chat
template (with thinking on where the template has a thinking mode), the model's greedy reply until it ends
its turn, then the next prompt, until the window is full. Prompts are drawn per window from
`random.Random(f"self:{seed}:{window}")`: questions about the Python help topics of the stdlib corpus, and
with `reasoning` half of them the reasoning probe's training-side problems asked as the probe asks them
(never an evaluation item). Generation is batched with the key/value cache (`BATCH` windows at a time).

Generated once per model, spec and seed and cached on disk; greedy generation can differ on another CPU,
so a session keeps the token ids beside it (`NAME.calib.safetensors`) and replay reads them back.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from workbench.domain.plan import CalibrationSpec
from workbench.infra.errors import Cancelled
from workbench.infra.tensorfile import save_tensors
from workbench.model.cache import cache_root
from workbench.model.loader import Loaded
from workbench.probes._generate import Rows, _pad_id, _prefix_state, chat_prompt, common_prefix_length, encode
from workbench.probes.reasoning.problems import training_problems
from workbench.probes.reasoning.thinking import style_for

BATCH = 32
Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]
VERSION = 1  # of the generation recipe: part of the cache key
QUESTIONS = ("Explain {} in Python with a short example.", "What is {} in Python, and when is it used?",
             "Write a short note for a beginner about {} in Python.", "What mistakes do people make with {} in Python?")
TRAIN_PROBLEMS = 512
IDS_FORMAT = "workbench-calibration-ids-1"


@dataclass
class Generated:
    """Self-generated windows: the token ids (windows x seqlen), their digest, and how they were obtained."""

    ids: torch.Tensor
    sha256: str
    seconds: float
    cached: bool


def ids_digest(ids: torch.Tensor) -> str:
    """SHA-256 of token ids as little-endian int64 (the same on every machine)."""
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().astype("<i8").tobytes()).hexdigest()


def prompts(window: int, seed: int, reasoning: bool, tokenizer) -> Iterator[str]:
    """The endless seeded stream of prompt texts (chat-rendered) of one window."""
    from pydoc_data.topics import topics

    rng = random.Random(f"self:{seed}:{window}")
    names = sorted(topics)
    problems = training_problems(seed, TRAIN_PROBLEMS) if reasoning else []
    style = style_for(tokenizer, "auto")
    while True:
        if problems and rng.random() < 0.5:
            yield style.prompt(tokenizer, rng.choice(problems).question)
        else:
            message = rng.choice(QUESTIONS).format(rng.choice(names).replace("-", " "))
            yield style.prompt(tokenizer, message) if style.mode == "template" else chat_prompt(tokenizer, message)


def generate(model, tokenizer, device: torch.device, windows: int, seqlen: int, seed: int, reasoning: bool,
             progress: Progress | None = None, cancel: Cancel | None = None) -> torch.Tensor:
    """`windows x seqlen` token ids of packed chat turns with the model's greedy replies."""
    out = []
    for start in range(0, windows, BATCH):
        if progress:
            progress(f"self-generated calibration {start}/{windows}", start / windows)
        streams = [prompts(w, seed, reasoning, tokenizer) for w in range(start, min(windows, start + BATCH))]
        out += _batch(model, tokenizer, device, streams, seqlen, cancel)
    return torch.tensor(out, dtype=torch.long)


def _batch(model, tokenizer, device, streams, seqlen: int, cancel) -> list[list[int]]:
    firsts = [encode(tokenizer, next(s))[:seqlen] for s in streams]
    eos = {tokenizer.eos_token_id} - {None}
    seqs = [list(f) for f in firsts]
    queues: list[list[int]] = [[] for _ in firsts]
    active = [i for i, s in enumerate(seqs) if len(s) < seqlen]
    if not active:
        return seqs
    shared = common_prefix_length([firsts[i] for i in active])
    state = _prefix_state(model, firsts[active[0]][:shared], device)
    rows = Rows(model, state, shared, [firsts[i][shared:] for i in active], _pad_id(tokenizer), device)
    while active:
        if cancel is not None and cancel():
            raise Cancelled()
        keep, feed = [], []
        for k, (row, choice) in enumerate(zip(active, rows.choices())):
            token = queues[row].pop(0) if queues[row] else choice
            seqs[row].append(token)
            if token in eos and not queues[row]:  # the reply ended its turn: the next prompt follows
                queues[row] = encode(tokenizer, next(streams[row]))
            if len(seqs[row]) < seqlen:
                keep.append(k)
                feed.append(token)
        if not keep:
            break
        rows.select(keep)
        rows.feed(feed)
        active = [active[k] for k in keep]
    return seqs


def _fingerprint(model) -> str:
    """A cheap fingerprint of the weights: the first values of every parameter."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().reshape(-1)[:16].float().cpu().numpy().tobytes())
    return h.hexdigest()


def cache_file(loaded: Loaded, spec: CalibrationSpec) -> Path:
    """Where the windows of this model (as it is now: call it on the dense weights), spec and seed are cached."""
    source = spec.generated
    key = json.dumps([VERSION, loaded.spec, str(next(loaded.model.parameters()).dtype), loaded.device.type,
                      _fingerprint(loaded.model), source.windows, source.reasoning, spec.seqlen, spec.seed])
    return cache_root() / "self-calibration" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"


def self_generated(loaded: Loaded, spec: CalibrationSpec, progress: Progress | None = None,
                   cancel: Cancel | None = None) -> Generated:
    """The spec's self-generated windows (all N of them) from the cache, or generated and cached; call it
    with the dense weights in."""
    from safetensors.torch import load_file

    path = cache_file(loaded, spec)
    start = time.perf_counter()
    if path.is_file():
        ids = load_file(path)["ids"]
        return Generated(ids, ids_digest(ids), time.perf_counter() - start, cached=True)
    source = spec.generated
    with torch.no_grad():
        ids = generate(loaded.model, loaded.tokenizer, loaded.device, source.windows, spec.seqlen, spec.seed,
                       source.reasoning, progress, cancel)
    seconds = time.perf_counter() - start
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, {"ids": ids}, IDS_FORMAT)
    except OSError:
        pass  # a cache that cannot be written only costs the next start its generation
    return Generated(ids, ids_digest(ids), seconds, cached=False)
