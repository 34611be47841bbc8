"""Forward passes that start at a block. The hidden states entering every block are kept once for a set
of token windows (the model as it stands), so a change confined to block b and the blocks after it is
measured by running only blocks b..L-1 and the head: a per-block scan does on average half the model's
work per measurement. The blocks run exactly as in the model's own forward: the same keyword arguments
(rotary position embeddings, attention mask) that the model hands block 0, one batch at a time.
"""

from __future__ import annotations

from typing import Iterator

import torch

from workbench.engine.capture import block0_inputs
from workbench.model.layout import blocks_of

BATCH = 4


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class BlockInputs:
    """The hidden states entering every block of `model` for `ids` (windows x seqlen), kept on `keep_on`,
    and after the last one those entering the head (position L: the model as it stands, head only)."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, device: torch.device,
                 keep_on: torch.device | str = "cpu"):
        self.model = model
        self.ids = ids
        self.device = device
        self.keep_on = torch.device(keep_on)
        self.inputs: list[list[torch.Tensor]] = []  # block -> batch -> hidden states
        self.kwargs: list[dict] = []  # batch -> the block call's keyword arguments
        blocks = blocks_of(model)
        with torch.no_grad():
            for start in range(0, len(ids), BATCH):
                hidden, kwargs = block0_inputs(model, ids[start : start + BATCH], device)
                h, kw = hidden[0], kwargs[0]
                self.kwargs.append(kw)
                for b, block in enumerate([*blocks, None]):
                    if b == len(self.inputs):
                        self.inputs.append([])
                    self.inputs[b].append(h.to(self.keep_on))
                    if block is not None:
                        h = _output(block(h, **kw))

    def logits_from(self, block: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, ids) per batch, running blocks `block`..L-1 and the head on the kept inputs of `block`."""
        blocks = blocks_of(self.model)
        head = self.model.get_output_embeddings()
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        with torch.no_grad():
            for n, kw in enumerate(self.kwargs):
                h = self.inputs[block][n].to(self.device)
                for later in blocks[block:]:
                    h = _output(later(h, **kw))
                logits = head(self.model.model.norm(h))
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                yield logits, self.ids[n * BATCH : (n + 1) * BATCH]
