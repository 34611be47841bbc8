"""Messages that background workers post to the app's screens (workers never touch widgets); job events
come as `workbench.tui.bridge.JobEvent`."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class HistogramReady(Message):
    """|W| histograms of one linear before and after pruning."""

    name: str
    edges: list[float]
    dense: list[int]
    pruned: list[int]
