"""Randomly initialised models of known shapes, for timings and memory without downloads.

Specs: `random:NAME[@SEED]` for a config shipped here (`llama-1b` is Llama-3.2-1B's config.json,
`llama-3b` Llama-3.2-3B, `llama-8b` Llama-3.1-8B, `qwen3-8b` Qwen3-8B, `smollm2-360m`
SmolLM2-360M-Instruct, and the mixtures of experts `granitemoe-1b-a400m` Granite-3.0-1B-A400M and
`qwen3-30b-a3b` Qwen3-30B-A3B) or `random:PATH[@SEED]` for any supported config.json. SEED defaults to 0.

Weights come from a seeded generator: chunk k (CHUNK values) of the parameter NAME is drawn from a torch
generator seeded with SHA-256(seed, NAME, k), uniform with the config's `initializer_range` as standard
deviation (1-D weights, the norms, are ones; biases zeros). So a spec gives the same weights on every
machine, whatever the thread count (chunks are drawn in parallel); bfloat16 weights are the float32 ones
rounded. The checkpoint is written once, as safetensors shards with a manifest, to
`cache_root()/random/`, and then loads like any local model: load times, memory mapping and `--offload`
are real. Its config carries `workbench_random` (spec and seed), which marks the model as random
wherever it goes: timings and memory are real but quality scores meaningless, so quality probes refuse
it (see `workbench.probes.refuse_random_weights`).

Tokenizer: the one beside PATH when there is one, else the embedded SmolLM2 tokenizer (49152 ids). When
the model's vocabulary is smaller than the tokenizer's, ids are taken modulo the vocabulary (`VocabFit`);
a larger vocabulary needs nothing (the tokenizer never produces the extra ids, decoding drops them).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.infra.errors import WorkbenchError
from workbench.model.cache import cache_root, cached_build, embedded_gguf_path, Progress
from workbench.model.experts import unfuse
from workbench.model.layout import find_linears

PREFIX = "random:"
MARK = "workbench_random"  # config key: {"spec": ..., "seed": ...}
SHAPES = Path(__file__).parent
CHUNK = 1 << 24  # values drawn from one generator
SHARD_BYTES = 2 << 30
FORMAT = 1  # bump when the drawing changes: cached checkpoints are keyed by it
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def shape_names() -> list[str]:
    """The shapes shipped with workbench (`random:NAME`)."""
    return sorted(p.stem for p in SHAPES.glob("*.json"))


def is_random(spec: str) -> bool:
    return spec.startswith(PREFIX)


@dataclass(frozen=True)
class RandomSpec:
    """A parsed random spec: `spec` without its seed, the cache name, the config (a dict) and the
    directory of the config's own tokenizer (None: the embedded one)."""

    spec: str
    name: str
    seed: int
    config: dict
    tokenizer_dir: Path | None


def parse(spec: str) -> RandomSpec:
    """Parse `random:NAME[@SEED]` or `random:PATH[@SEED]`, reading the config."""
    body, seed = spec[len(PREFIX):], 0
    head, at, tail = body.rpartition("@")
    if at and tail.isdigit():
        body, seed = head, int(tail)
    where = f"model {spec!r}"
    if body in shape_names():
        path, name, tokenizer_dir = SHAPES / f"{body}.json", body, None
    else:
        path = Path(body).expanduser()
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise WorkbenchError(where, f"not a known shape ({', '.join(shape_names())}) nor a config.json file")
        name = path.parent.resolve().name if path.stem == "config" else path.stem
        has_tokenizer = any((path.parent / file).is_file() for file in TOKENIZER_FILES)
        tokenizer_dir = path.parent.resolve() if has_tokenizer else None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorkbenchError(where, f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise WorkbenchError(where, f"{path} is not a Hugging Face config (no model_type)")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return RandomSpec(PREFIX + body, name, seed, config, tokenizer_dir)


def checkpoint(spec: str, dtype: torch.dtype, progress: Progress | None = None) -> Path:
    """The cached checkpoint directory of a random spec in `dtype`, built on first use."""
    parsed = parse(spec)
    key = hashlib.sha256(json.dumps([FORMAT, parsed.config, str(parsed.tokenizer_dir)], sort_keys=True).encode())
    dtype_name = str(dtype).removeprefix("torch.")
    target = cache_root() / "random" / f"{parsed.name}-seed{parsed.seed}-{dtype_name}-{key.hexdigest()[:10]}"
    try:
        return cached_build(target, lambda out: _build(out, parsed, dtype, progress), progress)
    except OSError as exc:
        raise WorkbenchError(f"model cache {target}", f"cannot write: {exc.strerror or exc}") from None


def _meta_model(spec: str, config_dict: dict):
    """The model of a config on the meta device (no memory), its layout checked."""
    from transformers import AutoConfig, AutoModelForCausalLM

    def build():
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)

    try:
        config = AutoConfig.for_model(**config_dict)
        model = build()
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkbenchError(f"model {spec!r}", f"unsupported config: {str(exc).splitlines()[0]}") from None
    checked = build()  # the checkpoint keeps the model's own (fused) names; the layout is checked as it will run
    unfuse(checked)
    find_linears(checked)
    return model


def _build(out: Path, parsed: RandomSpec, dtype: torch.dtype, progress: Progress | None) -> None:
    """Write config, seeded weights (safetensors shards and index) and tokenizer into `out`."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    spec, seed = parsed.spec, parsed.seed
    model = _meta_model(spec, parsed.config)
    std = float(getattr(model.config, "initializer_range", 0.02))
    params = list(model.named_parameters())  # tied weights appear once
    shards: list[list[tuple[str, torch.Size]]] = [[]]
    size = 0
    for name, p in params:
        nbytes = p.numel() * dtype.itemsize
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, p.shape))
        size += nbytes
    files = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for n, (file, shard) in enumerate(zip(files, shards)):
        if progress:
            progress(f"drawing random weights for {spec} (first use only): shard {n + 1}/{len(shards)}", n / len(shards))
        save_file({name: seeded_tensor(name, shape, std, seed, dtype) for name, shape in shard}, out / file,
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys((name for name, _ in shard), file))
    if len(files) > 1:
        total = sum(p.numel() * dtype.itemsize for _, p in params)
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1), encoding="utf-8")
    setattr(model.config, MARK, {"spec": spec, "seed": seed})
    model.config.dtype = dtype
    model.config.save_pretrained(out)
    if parsed.tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(parsed.tokenizer_dir))
    else:
        gguf = embedded_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(out)


def seeded_tensor(name: str, shape: torch.Size, std: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """The parameter `name`'s random values (see the module docstring); the same on every machine."""
    if len(shape) == 1:
        return (torch.zeros if name.endswith("bias") else torch.ones)(shape, dtype=dtype)
    flat = torch.empty(shape.numel(), dtype=dtype)
    half_width = std * 3**0.5  # uniform on [-a, a] has standard deviation a / sqrt(3)

    def draw(k: int) -> None:
        digest = hashlib.sha256(f"{seed}:{name}:{k}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        part = flat[k * CHUNK:(k + 1) * CHUNK]
        part.copy_(torch.rand(part.numel(), generator=generator).mul_(2 * half_width).sub_(half_width))

    with ThreadPoolExecutor(max_workers=torch.get_num_threads()) as pool:
        list(pool.map(draw, range((flat.numel() + CHUNK - 1) // CHUNK)))
    return flat.view(shape)


def random_weights_of(model: torch.nn.Module) -> str | None:
    """`random:SPEC (seed N)` when the model was built here with random weights, else None."""
    mark = getattr(getattr(model, "config", None), MARK, None)
    return f"{mark['spec']} (seed {mark['seed']})" if isinstance(mark, dict) else None


class VocabFit:
    """A tokenizer whose ids are taken modulo a smaller model vocabulary; everything else is the tokenizer's."""

    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size

    def __getattr__(self, name: str):
        value = getattr(self.tokenizer, name)
        return value % self.vocab_size if name.endswith("_token_id") and isinstance(value, int) else value

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, text, **kwargs):
        encoded = self.tokenizer(text, **kwargs)
        ids = encoded["input_ids"]
        fold = lambda seq: [i % self.vocab_size for i in seq]  # noqa: E731
        return {**encoded, "input_ids": fold(ids) if isinstance(text, str) else [fold(s) for s in ids]}
