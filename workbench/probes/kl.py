"""KL divergence of the current model from the dense model, token by token, on the held-out windows the
perplexity probe reads at the same size (quick: 2 windows of 256 tokens), as llama.cpp's
`llama-perplexity --kl-divergence` reports it for quantized models: the mean token KL(dense || current)
in nats (the score; lower is better, floor 0), its median, 90/95/99/99.9th percentiles and maximum,
and the share of tokens whose top-1 prediction is still the dense model's.

The dense side is computed once per engine and kept on the CPU in bounded memory (`DenseTopK`): for
every predicted token the dense model's top-k log-probabilities (k = `TOP_K` = 64) with their token ids,
and the log of the dense tail mass p_T = 1 - (sum of the top k). That is windows x tokens x k entries
(8 bytes each: a float32 and an int32 id) plus one per token, whatever the vocabulary: 2 x 255 x 64
entries, 0.26 MB, for the quick windows of any model, where full logits of a 152k vocabulary would take
310 MB. From that store, with q the current model's distribution and K the dense top k,

    KL_K = sum_{i in K} p_i (log p_i - log q_i) + p_T (log p_T - log q_T),

where log q_T, the log of q's mass outside K, is a logsumexp of q's log-probabilities outside K (log p_T
is computed the same way from the dense log-probabilities). KL_K is the exact KL between the two
distributions with the tail merged into one outcome: by the log-sum inequality a lower bound of the
full KL, short of it by exactly p_T * KL(p_tail / p_T || q_tail / q_T), the dense tail's mass times the
divergence between the shapes of the two tails. It equals the full KL when k is the vocabulary size or
when q's tail is p's tail scaled. Top-1 agreement is exact (the dense argmax is in K); a tie at the
current model's top counts as agreement. Float rounding can leave a token's sum a hair below zero; it
is clamped to 0.

Units: per run of `CHUNK` (32) predicted tokens within a window, the summed KL ("score") and the number
of tokens whose top-1 agrees ("top1"), each weighted by the run's token count. Cost: one forward pass of
the current model over the windows, shared with perplexity when a run asks for both
(`workbench.probes.heldout`). A probe context without a dense reference (a bare
model) makes the model its own reference: KL 0, agreement 1, no forward pass.
"""

from __future__ import annotations

from typing import Callable

import torch

from workbench.probes import PROBES, DenseTopK, Probe, ProbeContext, chunk_units
from workbench.probes.heldout import BATCH, held_out_pass, held_out_windows, log_mass_outside
from workbench.probes.perplexity import Perplexity

TOP_K = 64
QUANTILES = {"median": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}


def log_probs(model, batch: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities at every predicted token of `batch`: (rows, seqlen - 1, vocab), float32."""
    return torch.log_softmax(model(batch).logits[:, :-1].float(), dim=-1)


def dense_topk(model, windows: torch.Tensor, device: torch.device, k: int = TOP_K,
               check_cancel: Callable[[], None] | None = None) -> DenseTopK:
    """The store of `model` (run it with the dense weights) at `windows`, batch by batch, on the CPU."""
    values, ids, tails = [], [], []
    for start in range(0, len(windows), BATCH):
        if check_cancel is not None:
            check_cancel()
        logprobs = log_probs(model, windows[start : start + BATCH].to(device))
        top = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        tails.append(log_mass_outside(logprobs, top.indices).cpu())
        values.append(top.values.cpu())
        ids.append(top.indices.to(torch.int32).cpu())
    return DenseTopK(windows.clone(), torch.cat(values), torch.cat(ids), torch.cat(tails))


@PROBES.register("kl")
class KL(Probe):
    """Mean token KL(dense || current) in nats on the held-out windows; top-1 agreement in details."""

    name = "kl"
    metric = "KL nats"
    higher_is_better = False
    relative = True
    # Replay tolerance, relative, perplexity's numbers (see Perplexity; README, Reliability): 0.1% float
    # noise plus the share of the damage recomputed masks moved it, 0.065 (0.043 measured, half again),
    # with the KL itself as the damage (it is 0 for the dense model). Perplexity's spread is a share of
    # ln(ppl / dense ppl), a difference of mean NLLs in nats, as KL is; kl's own spread across machines
    # was not measured separately.
    tolerance = Perplexity.tolerance + Perplexity.DAMAGE
    floor = 0.0

    def measure(self, ctx: ProbeContext, size: str):
        ctx.check_cancel()
        if ctx.dense_topk is None:
            windows = held_out_windows(ctx, size)
            kl = torch.zeros(len(windows), windows.shape[1] - 1)
            agree, k = torch.ones_like(kl, dtype=torch.bool), 0
        else:
            measured = held_out_pass(ctx, size, with_kl=True)
            kl, agree, k = measured.kl, measured.agree, measured.k
        flat = kl.flatten().double()
        quantiles = torch.quantile(flat, torch.tensor(list(QUANTILES.values()), dtype=torch.float64)).tolist()
        details = {
            "mean": flat.mean().item(),
            **dict(zip(QUANTILES, quantiles)),
            "max": flat.max().item(),
            "top1": agree.double().mean().item(),
            "tokens": flat.numel(),
            "k": k,
            "reference": "dense" if ctx.dense_topk is not None else "self",
        }
        units = {"score": chunk_units(kl), "top1": chunk_units(agree.float())}
        return details["mean"], len(kl), details, units
