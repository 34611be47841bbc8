"""Text sources for calibration and evaluation, and deterministic token windows.

Sources:
- `embedded`: Python's stdlib `pydoc_data.topics` (79 help topics, about 120k tokens). Topics are sorted
  by name; every fifth one (index 2, 7, 12, ...) is the held-out evaluation part, the rest calibrate.
- `hf:NAME[:CONFIG[:SPLIT]]`: a Hugging Face hub dataset, streamed (e.g. `hf:allenai/c4:en:train`,
  `hf:wikitext:wikitext-2-raw-v1:test`). Without SPLIT, calibration reads `train` and evaluation
  `validation`. Needs network access the first time.
- a local `.txt` (one document per blank-line-separated paragraph) or `.jsonl` file (one JSON object per
  line with a string `text` field; blank lines are skipped): UTF-8, read directly (the same documents
  `datasets`' text and json builders give), so that an empty, binary or malformed file is one error
  naming the file and, for `.jsonl`, the line. Documents split as for `embedded` (every fifth held out).

Calibration windows are `samples x seqlen` token windows at seeded random offsets (Python's
`random.Random(seed)`, identical on every machine; they overlap when the part has fewer than
samples x seqlen tokens, and a part too short for one window is refused); disjoint windows (LayerIF's
training and validation examples) are a seeded draw without replacement of the part's consecutive
`seqlen`-token slots, so no token position is in two of them; evaluation windows are consecutive from the
start.
"""

from __future__ import annotations

import json
import random
import weakref
from pathlib import Path

import torch

from workbench.domain.plan import CalibrationSpec
from workbench.infra.errors import WorkbenchError

CALIBRATION = "calibration"
EVALUATION = "evaluation"
HELD_OUT_EVERY = 5
HELD_OUT_OFFSET = 2
HF_DOC_LIMIT = 20_000  # documents streamed from a hub dataset at most

# (id(tokenizer), source, part) -> (a weak reference to that tokenizer, its ids); an entry leaves with its
# tokenizer, so a later tokenizer that is given the same id() never reads another's ids
_token_cache: dict[tuple, tuple[weakref.ref, torch.Tensor]] = {}


def _split_docs(docs: list[str], part: str) -> list[str]:
    keep_eval = part == EVALUATION
    return [d for i, d in enumerate(docs) if (i % HELD_OUT_EVERY == HELD_OUT_OFFSET) == keep_eval]


def _embedded_docs() -> list[str]:
    import datasets
    from pydoc_data.topics import topics

    names = sorted(topics)
    ds = datasets.Dataset.from_dict({"topic": names, "text": [topics[n] for n in names]})
    return list(ds["text"])


def _read_text(path: Path, where: str) -> str:
    """The whole file as UTF-8 text (universal newlines), refusing empty and binary files."""
    if not path.is_file():
        raise WorkbenchError(where, "file not found" if not path.exists() else "not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WorkbenchError(where, f"cannot read: {exc.strerror or exc}") from None
    if not raw:
        raise WorkbenchError(where, "file is empty (0 bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WorkbenchError(where, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): a binary file?") from None
    if "\0" in text:
        raise WorkbenchError(where, f"contains NUL bytes (first at offset {text.index(chr(0))}): a binary file?")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _jsonl_docs(text: str, where: str) -> list[str]:
    docs = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkbenchError(f"{where}, line {number}", f"not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise WorkbenchError(f"{where}, line {number}", f"expected a JSON object with a 'text' field, got {type(row).__name__}")
        if "text" not in row:
            fields = ", ".join(map(repr, row)) or "none"
            raise WorkbenchError(f"{where}, line {number}", f"no 'text' field (fields: {fields})")
        if not isinstance(row["text"], str):
            raise WorkbenchError(f"{where}, line {number}", f"'text' must be a string, got {type(row['text']).__name__}")
        if row["text"]:
            docs.append(row["text"])
    return docs


def _local_docs(path: Path) -> list[str]:
    where = f"data {str(path)!r}"
    if path.suffix not in (".txt", ".jsonl"):
        raise WorkbenchError(where, "local data must be a .txt or .jsonl file")
    text = _read_text(path, where)
    if path.suffix == ".jsonl":
        docs = _jsonl_docs(text, where)
    else:
        docs = [p for p in text.split("\n\n") if p.strip()]
    if not docs:
        raise WorkbenchError(where, "no text (only blank lines or empty 'text' fields)" if path.suffix == ".jsonl" else "no text (only whitespace)")
    return docs


def _hub_docs(spec: str, part: str) -> list[str]:
    import datasets

    fields = spec[3:].split(":")
    name = fields[0]
    config = fields[1] if len(fields) > 1 and fields[1] else None
    split = fields[2] if len(fields) > 2 and fields[2] else ("train" if part == CALIBRATION else "validation")
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
        docs = []
        for row in stream:
            text = row.get("text") or ""
            if text.strip():
                docs.append(text)
            if len(docs) >= HF_DOC_LIMIT:
                break
    except Exception as exc:  # datasets raises many types (network, missing config, ...)
        raise WorkbenchError(f"data {spec!r}", f"cannot load hub dataset: {str(exc).splitlines()[0]}") from exc
    return docs


def load_texts(source: str, part: str) -> list[str]:
    """The documents of `source` for `part` (calibration or evaluation)."""
    if part not in (CALIBRATION, EVALUATION):
        raise ValueError(part)
    if source == "embedded":
        return _split_docs(_embedded_docs(), part)
    if source.startswith("hf:"):
        return _hub_docs(source, part)
    if source.endswith((".txt", ".jsonl")):
        return _split_docs(_local_docs(Path(source).expanduser()), part)
    raise WorkbenchError(f"data {source!r}", "unknown source (use embedded, hf:NAME[:CONFIG[:SPLIT]], or a .txt/.jsonl file)")


def token_stream(tokenizer, source: str, part: str) -> torch.Tensor:
    """All documents of a part, joined by blank lines and tokenized once (cached per tokenizer)."""
    key = (id(tokenizer), source, part)
    if key in _token_cache:  # this tokenizer's own: an entry leaves when its tokenizer is freed
        return _token_cache[key][1]
    text = "\n\n".join(load_texts(source, part))
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    _token_cache[key] = (weakref.ref(tokenizer, lambda _, key=key: _token_cache.pop(key, None)), ids)
    return ids


def calibration_windows(tokenizer, source: str = CalibrationSpec.source, samples: int = CalibrationSpec.samples,
                        seqlen: int = CalibrationSpec.seqlen, seed: int = CalibrationSpec.seed) -> torch.Tensor:
    """`samples x seqlen` token ids from seeded random offsets of the calibration part."""
    if samples < 1 or seqlen < 2:
        raise WorkbenchError("calibration", f"samples must be >= 1 and seqlen >= 2 (got {samples} x {seqlen})")
    ids = token_stream(tokenizer, source, CALIBRATION)
    if len(ids) <= seqlen:
        raise WorkbenchError(f"data {source!r}", f"too short: {len(ids)} tokens in the calibration part, need at least "
                                                 f"{seqlen + 1} for one window of --seqlen {seqlen} ({samples} x {seqlen} "
                                                 f"= {samples * seqlen} without overlap)")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(ids) - seqlen) for _ in range(samples)]
    return torch.stack([ids[s : s + seqlen] for s in starts])


def disjoint_starts(tokens: int, samples: int, seqlen: int, seed: int) -> list[int]:
    """Starts of `samples` windows of `seqlen` tokens in a stream of `tokens` that share no position: a
    seeded draw (Python's `random.Random(seed)`) without replacement of the tokens // seqlen slots (at
    least `samples` of them)."""
    return [slot * seqlen for slot in random.Random(seed).sample(range(tokens // seqlen), samples)]


def disjoint_windows(tokenizer, source: str, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`samples x seqlen` token ids of the calibration part at `disjoint_starts` (no position in two windows)."""
    ids = token_stream(tokenizer, source, CALIBRATION)
    if samples > len(ids) // seqlen:
        raise WorkbenchError(f"data {source!r}", f"too short: {len(ids)} tokens in the calibration part hold "
                                                 f"{len(ids) // seqlen} disjoint windows of {seqlen}, {samples} asked for")
    return torch.stack([ids[s : s + seqlen] for s in disjoint_starts(len(ids), samples, seqlen, seed)])


def evaluation_windows(tokenizer, source: str = "embedded", seqlen: int = 256, max_windows: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping `seqlen` windows of the evaluation part (at most `max_windows`)."""
    ids = token_stream(tokenizer, source, EVALUATION)
    count = len(ids) // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        held_out = "" if source.startswith("hf:") else " (every fifth document, from the third)"
        raise WorkbenchError(f"data {source!r}", f"too short: {len(ids)} tokens in the held-out evaluation part{held_out}, "
                                                 f"need at least {seqlen} for one {seqlen}-token window")
    return ids[: count * seqlen].view(count, seqlen)
