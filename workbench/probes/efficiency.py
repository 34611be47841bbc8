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
Dense matrix kernels do not skip zeros, so unstructured sparsity leaves the speed unchanged.
"""

from __future__ import annotations

import time

import torch

from workbench.model import find_linears
from workbench.probes import PROBES, Probe, ProbeContext
from workbench.probes._generate import chat_prompt, encode, greedy_generate

BATCH = {"quick": 4, "full": 8}
NEW_TOKENS = {"quick": 4, "full": 32}
PROMPT = "Write a short paragraph about the history of the bicycle."


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Physical and non-zero parameter counts of the block linears and of the whole model."""
    linears = [ref.module.weight for block in find_linears(model) for ref in block]
    params = list(model.parameters())  # distinct tensors: tied weights appear once
    return {
        "block_linear_params": sum(w.numel() for w in linears),
        "block_linear_nonzero": sum(int(torch.count_nonzero(w)) for w in linears),
        "model_params": sum(p.numel() for p in params),
        "model_nonzero": sum(int(torch.count_nonzero(p)) for p in params),
    }


def _nvml_energy_reader(device: torch.device):
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
        energy = _nvml_energy_reader(ctx.device)

        def generate(new_tokens: int) -> None:
            greedy_generate(ctx.model, ctx.tokenizer, prompts, new_tokens, ctx.device, stop_at_eos=False,
                            cancel=ctx.check_cancel, batch_size=len(prompts))

        if ctx.device.type == "cuda":
            generate(1)  # warm-up: kernels and allocations, not counted
            _synchronize(ctx.device)
        joules = energy() if callable(energy) else 0.0
        start = time.perf_counter()
        generate(NEW_TOKENS[size])
        _synchronize(ctx.device)
        seconds = time.perf_counter() - start
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
            details["joules_per_token"] = (energy() - joules) / tokens
        else:
            details["energy"] = energy
        return counts["model_nonzero"] / 1e6, tokens, details
