"""The held-out windows that perplexity and kl read, and one forward pass over them that gives both: per
token the NLL, and, against the dense model's top-k store, the KL and top-1 agreement. A probe run asking
for both (the quick suite) runs the model over the windows once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from workbench.model.data import evaluation_windows
from workbench.probes import DenseTopK, ProbeContext

SEQLEN = 256
WINDOWS = {"quick": 2, "full": None}  # None: every window of the evaluation part
BATCH = 4


def held_out_windows(ctx: ProbeContext, size: str) -> torch.Tensor:
    """The token windows (windows x SEQLEN) perplexity and kl read at `size`."""
    return evaluation_windows(ctx.tokenizer, ctx.eval_source, SEQLEN, WINDOWS[size])


def log_mass_outside(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log of the probability mass outside the token `ids` (..., k) at every position (-inf when none is
    left); overwrites those entries of `logprobs` with -inf instead of copying it."""
    return torch.logsumexp(logprobs.scatter_(-1, ids, float("-inf")), dim=-1)


def token_kl(logprobs: torch.Tensor, top_logprobs: torch.Tensor, top_ids: torch.Tensor,
             tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL_K(dense || current) at every position from the current model's full `logprobs` (consumed:
    overwritten) and the dense top-k (`top_logprobs`, `top_ids`, `tail`), and whether the dense top-1 is
    a top-1 of the current model."""
    ids = top_ids.long()
    current = logprobs.gather(-1, ids)
    agree = current[..., 0] == logprobs.amax(dim=-1)
    current_tail = log_mass_outside(logprobs, ids)
    tail_term = torch.where(tail == float("-inf"), 0.0, tail.exp() * (tail - current_tail))
    kl = (top_logprobs.exp() * (top_logprobs - current)).sum(dim=-1) + tail_term
    return kl.clamp_min(0.0), agree


@dataclass(frozen=True)
class HeldOut:
    """One pass over the held-out windows: per predicted token (windows x (SEQLEN - 1), float32, CPU) the
    NLL and its total as `F.nll_loss(reduction="sum")` adds it per batch; with a dense reference, the KL
    and top-1 agreement and the reference's k."""

    nll: torch.Tensor
    total: float
    kl: torch.Tensor | None = None
    agree: torch.Tensor | None = None
    k: int = 0


def token_pass(model, ids: torch.Tensor, device: torch.device, reference: DenseTopK | None = None,
               check_cancel: Callable[[], None] | None = None) -> HeldOut:
    """One forward pass of `model` over the token windows `ids`, batch by batch: the NLL per predicted
    token, and against `reference` (the dense top-k at the same windows) the KL and top-1 agreement."""
    nlls, kls, agrees, total = [], [], [], 0.0
    for start in range(0, len(ids), BATCH):
        if check_cancel is not None:
            check_cancel()
        rows = slice(start, start + BATCH)
        batch = ids[rows].to(device)
        logprobs = F.log_softmax(model(batch).logits[:, :-1].float(), dim=-1)
        flat, target = logprobs.view(-1, logprobs.shape[-1]), batch[:, 1:].reshape(-1)
        total += F.nll_loss(flat, target, reduction="sum").item()
        nlls.append(F.nll_loss(flat, target, reduction="none").view(len(batch), -1).cpu())
        if reference is not None:  # after the NLL: token_kl overwrites the log-probabilities
            kl, agree = token_kl(logprobs, reference.logprobs[rows].to(device), reference.ids[rows].to(device),
                                 reference.tail[rows].to(device))
            kls.append(kl.cpu())
            agrees.append(agree.cpu())
    if reference is None:
        return HeldOut(torch.cat(nlls), total)
    return HeldOut(torch.cat(nlls), total, torch.cat(kls), torch.cat(agrees), reference.k)


def held_out_pass(ctx: ProbeContext, size: str, with_kl: bool) -> HeldOut:
    """The pass over the held-out windows at `size`, kept on `ctx` for the other probe of the run: with KL
    when `with_kl` or kl is planned in this run, and the context has a dense reference."""
    with_kl = ctx.dense_topk is not None and (with_kl or "kl" in ctx.planned)
    kept = ctx.shared.get(("held-out", size))
    if kept is not None and (kept.kl is not None or not with_kl):
        return kept
    ids = held_out_windows(ctx, size)
    reference = ctx.dense_topk(ids) if with_kl else None
    result = token_pass(ctx.model, ids, ctx.device, reference, ctx.check_cancel)
    ctx.shared[("held-out", size)] = result
    return result
