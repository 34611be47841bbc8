"""Efficiency probe: parameters remaining and greedy generation speed (and energy on NVIDIA GPUs).

The score is the number of non-zero parameters of the whole model, in millions: it falls with
unstructured pruning (zeros) and with structured pruning (smaller matrices), and it is a pure
function of the weights, so `workbench replay --check` reproduces it exactly. Speed and energy are
reported in `details` only: they depend on the machine and on its load (the same run can vary by a
factor of several on a shared CPU), so no tolerance would make them a reliable replay check.

Details:
- `block_linear_params` / `block_linear_nonzero`: the seven projections of every decoder block
  (the weights the pruning methods touch); `model_params` / `model_nonzero`: every distinct parameter
  (tied embeddings count once). `params` is the physical size, which shrinks after structured pruning.
- `tokens_per_second`: batched greedy generation (`BATCH` copies of one chat prompt, `NEW_TOKENS`
  new tokens each, end-of-sequence ignored), prefill included, after one warm-up step on CUDA (kernel
  loading and the caching allocator's first allocations would otherwise count).
- `joules_per_token`: on CUDA with `pynvml` importable, the GPU's energy counter
  (nvmlDeviceGetTotalEnergyConsumption) over the same generation; otherwise `energy` says why not.
- `sparse_2to4`: when every block linear is 2:4 sparse, on a GPU of compute capability 8.0+ in float16
  or bfloat16, the same generation with the block linears as PyTorch semi-structured sparse tensors
  (`torch.sparse.to_sparse_semi_structured`, 2:4 sparse tensor-core kernels): dense and sparse tokens/s
  and their ratio; otherwise a string saying why it was not measured.
Dense matrix kernels do not skip zeros, so unstructured sparsity leaves the speed unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch

from workbench.model.layout import find_linears
from workbench.probes import PROBES, Probe, ProbeContext
from workbench.probes._generate import chat_prompt, encode, greedy_generate

BATCH = {"quick": 4, "full": 8}
NEW_TOKENS = {"quick": 4, "full": 32}
PROMPT = "Write a short paragraph about the history of the bicycle."


CHUNK = 1 << 22  # elements counted at a time
BIT_VIEWS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # float width in bytes -> integer of that width


def nonzero(weight: torch.Tensor) -> int:
    """Non-zero entries of a floating-point tensor (-0.0 counts as zero, as `!= 0` has it).

    Counted on the bit pattern with the sign bit shifted out: `torch.count_nonzero` on floats is about 4x
    slower on the random zero patterns pruning leaves (it branches per element)."""
    if not weight.is_floating_point() or weight.element_size() not in BIT_VIEWS or not weight.is_contiguous():
        return int(torch.count_nonzero(weight))
    bits = weight.view(BIT_VIEWS[weight.element_size()]).reshape(-1)
    return sum(int(torch.count_nonzero(chunk << 1)) for chunk in bits.split(CHUNK))  # temporaries of CHUNK only


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Physical and non-zero parameter counts of the block linears and of the whole model."""
    params = list(model.parameters())  # distinct tensors: tied weights appear once
    counted = {id(p): nonzero(p.detach()) for p in params}
    linears = [ref.module.weight for block in find_linears(model) for ref in block]
    return {
        "block_linear_params": sum(w.numel() for w in linears),
        "block_linear_nonzero": sum(counted[id(w)] for w in linears),
        "model_params": sum(p.numel() for p in params),
        "model_nonzero": sum(counted.values()),
    }


def nvml_energy_reader(device: torch.device):
    """A function returning the GPU's energy counter in joules, or a reason string when unavailable."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return "not measured: needs a CUDA device"
    try:
        import pynvml
    except ImportError:
        return "not measured: pynvml is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:  # pynvml raises NVMLError subclasses, and old GPUs lack the counter
        return f"not measured: NVML energy counter unavailable ({exc})"
    return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0


def is_2to4(weight: torch.Tensor) -> bool:
    """At most two non-zeros in every group of four consecutive input weights."""
    return weight.shape[-1] % 4 == 0 and bool((weight.reshape(-1, 4) != 0).sum(-1).le(2).all())


def semi_structured_refusal(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the 2:4 sparse kernels cannot run this model here, or None when they can."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"not measured: 2:4 sparse kernels need a CUDA GPU of compute capability 8.0+ (device {device})"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 0):
        return f"not measured: compute capability {capability[0]}.{capability[1]}, 2:4 sparse kernels need 8.0+"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"not measured: 2:4 sparse kernels run float16 or bfloat16, the model is {str(dtype).removeprefix('torch.')}"
    if not all(is_2to4(ref.module.weight) for block in find_linears(model) for ref in block):
        return "not measured: the block linears are not all 2:4 sparse (prune with --pattern 2:4)"
    return None


@contextlib.contextmanager
def semi_structured_linears(model: torch.nn.Module):
    """Every block linear's weight as a semi-structured sparse tensor while inside; the weights after
    are the very tensors before."""
    from torch.sparse import to_sparse_semi_structured

    kept = []
    try:
        for block in find_linears(model):
            for ref in block:
                kept.append((ref.module, ref.module.weight))
                ref.module.weight = torch.nn.Parameter(to_sparse_semi_structured(ref.module.weight.detach()),
                                                       requires_grad=False)
                ref.module.forward = functools.partial(linear_2d, ref.module)
        yield
    finally:
        for module, weight in kept:
            module.weight = weight
            vars(module).pop("forward", None)


def linear_2d(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` with the input flattened to rows: the sparse tensor takes a matrix product, while a
    bias-free linear of a 3-D input becomes a broadcast batched product, which it refuses ("can't perform
    requested op (expand.default)", seen on an H200 with torch 2.11)."""
    out = torch.nn.functional.linear(x.reshape(-1, x.shape[-1]), module.weight, module.bias)
    return out.view(*x.shape[:-1], out.shape[-1])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@PROBES.register("efficiency")
class Efficiency(Probe):
    """Non-zero parameters in millions (lower means smaller); speed and energy in details."""

    name = "efficiency"
    metric = "M nonzero params"
    higher_is_better = False
    tolerance = 0.001  # a thousand weights: zeros are reproduced exactly on replay
    floor = 0.0

    def measure(self, ctx: ProbeContext, size: str):
        counts = parameter_counts(ctx.model)
        prompt = encode(ctx.tokenizer, chat_prompt(ctx.tokenizer, PROMPT))
        prompts = [prompt] * BATCH[size]
        energy = nvml_energy_reader(ctx.device)

        def generate(new_tokens: int) -> None:
            greedy_generate(ctx.model, ctx.tokenizer, prompts, new_tokens, ctx.device, stop_at_eos=False,
                            cancel=ctx.check_cancel, batch_size=len(prompts))

        def timed() -> tuple[float, float]:
            """Seconds and joules of one generation."""
            if ctx.device.type == "cuda":
                generate(1)  # warm-up: kernels and allocations, not counted
                _synchronize(ctx.device)
            joules = energy() if callable(energy) else 0.0
            start = time.perf_counter()
            generate(NEW_TOKENS[size])
            _synchronize(ctx.device)
            return time.perf_counter() - start, (energy() - joules if callable(energy) else 0.0)

        seconds, joules = timed()
        tokens = BATCH[size] * NEW_TOKENS[size]
        details = {
            **counts,
            "block_linear_density": counts["block_linear_nonzero"] / counts["block_linear_params"],
            "tokens_per_second": tokens / seconds,
            "generated_tokens": tokens,
            "batch": BATCH[size],
            "generation_seconds": seconds,
        }
        if callable(energy):
            details["joules_per_token"] = joules / tokens
        else:
            details["energy"] = energy
        details["sparse_2to4"] = _sparse_speed(ctx, timed, tokens, tokens / seconds)
        return counts["model_nonzero"] / 1e6, tokens, details, {}


def _sparse_speed(ctx: ProbeContext, timed, tokens: int, dense_speed: float) -> dict | str:
    """Dense vs 2:4 sparse tokens/s of the same generation (`timed()` runs it), or why not measured."""
    refusal = semi_structured_refusal(ctx.model, ctx.device, next(ctx.model.parameters()).dtype)
    if refusal:
        return refusal
    try:
        with semi_structured_linears(ctx.model):
            sparse_speed = tokens / timed()[0]
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:  # shapes or builds the kernels refuse
        return f"not measured: the 2:4 sparse kernels refused this model ({str(exc).splitlines()[0]})"
    return {"dense_tokens_per_second": dense_speed, "sparse_tokens_per_second": sparse_speed,
            "speedup": sparse_speed / dense_speed}
