"""Text sources for calibration and evaluation, and deterministic token windows.

Sources (loaded through `datasets`):
- `embedded`: Python's stdlib `pydoc_data.topics` (79 help topics, about 120k tokens). Topics are sorted
  by name; every fifth one (index 2, 7, 12, ...) is the held-out evaluation part, the rest calibrate.
- `hf:NAME[:CONFIG[:SPLIT]]`: a Hugging Face hub dataset, streamed (e.g. `hf:allenai/c4:en:train`,
  `hf:wikitext:wikitext-2-raw-v1:test`). Without SPLIT, calibration reads `train` and evaluation
  `validation`. Needs network access the first time.
- a local `.txt` (one document per blank-line-separated paragraph) or `.jsonl` file (a `text` field):
  documents split as for `embedded` (every fifth held out).

Calibration windows are `samples x seqlen` token windows at seeded random offsets (Python's
`random.Random(seed)`, identical on every machine); evaluation windows are consecutive from the start.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from workbench.errors import WorkbenchError

CALIBRATION = "calibration"
EVALUATION = "evaluation"
HELD_OUT_EVERY = 5
HELD_OUT_OFFSET = 2
HF_DOC_LIMIT = 20_000  # documents streamed from a hub dataset at most

_token_cache: dict[tuple, torch.Tensor] = {}


def _split_docs(docs: list[str], part: str) -> list[str]:
    keep_eval = part == EVALUATION
    return [d for i, d in enumerate(docs) if (i % HELD_OUT_EVERY == HELD_OUT_OFFSET) == keep_eval]


def _embedded_docs() -> list[str]:
    import datasets
    from pydoc_data.topics import topics

    names = sorted(topics)
    ds = datasets.Dataset.from_dict({"topic": names, "text": [topics[n] for n in names]})
    return list(ds["text"])


def _local_docs(path: Path) -> list[str]:
    import datasets

    if not path.is_file():
        raise WorkbenchError(f"data {str(path)!r}", "file not found")
    if path.suffix == ".jsonl":
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
        if "text" not in ds.column_names:
            raise WorkbenchError(f"data {str(path)!r}", f"no 'text' field (fields: {', '.join(ds.column_names)})")
        return [t for t in ds["text"] if t]
    if path.suffix == ".txt":
        ds = datasets.load_dataset("text", data_files=str(path), split="train", sample_by="paragraph")
        return [t for t in ds["text"] if t.strip()]
    raise WorkbenchError(f"data {str(path)!r}", "local data must be a .txt or .jsonl file")


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
    if key not in _token_cache:
        text = "\n\n".join(load_texts(source, part))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        _token_cache[key] = torch.tensor(ids, dtype=torch.long)
    return _token_cache[key]


def calibration_windows(tokenizer, source: str = "embedded", samples: int = 32, seqlen: int = 256, seed: int = 0) -> torch.Tensor:
    """`samples x seqlen` token ids from seeded random offsets of the calibration part."""
    if samples < 1 or seqlen < 2:
        raise WorkbenchError("calibration", f"samples must be >= 1 and seqlen >= 2 (got {samples} x {seqlen})")
    ids = token_stream(tokenizer, source, CALIBRATION)
    if len(ids) <= seqlen:
        raise WorkbenchError(f"data {source!r}", f"only {len(ids)} calibration tokens, need more than seqlen={seqlen}")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(ids) - seqlen) for _ in range(samples)]
    return torch.stack([ids[s : s + seqlen] for s in starts])


def evaluation_windows(tokenizer, source: str = "embedded", seqlen: int = 256, max_windows: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping `seqlen` windows of the evaluation part (at most `max_windows`)."""
    ids = token_stream(tokenizer, source, EVALUATION)
    count = len(ids) // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise WorkbenchError(f"data {source!r}", f"only {len(ids)} evaluation tokens, need at least seqlen={seqlen}")
    return ids[: count * seqlen].view(count, seqlen)
