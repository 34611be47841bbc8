"""Calibration statistics, cached: the token windows, the committed statistics of the last full prune,
the dense model's one-pass statistics (for allocators that read the dense model), and the store that
keeps their Hessians on disk.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch.utils.serialization import config as serialization_config

from workbench.domain.plan import ONE_PASS, CalibrationSpec
from workbench.engine.capture import BlockStats, capture
from workbench.infra.errors import WorkbenchError
from workbench.methods import LinearStats
from workbench.model.data import calibration_windows
from workbench.model.layout import LinearRef
from workbench.model.loader import Loaded

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]


class HessianStore:
    """Blocks' Hessians moved to files, keeping only the channel norms in memory: all blocks' Hessians
    together are as large as the model's linears (several GiB for an 8B model). One block is read back
    at a time."""

    def __init__(self):
        self._files: dict[int, tuple[BlockStats, Path]] = {}  # id(block statistics) -> (them, file)
        self._loaded: tuple[BlockStats | None, dict] = (None, {})
        self._dir: Path | None = None
        self._count = 0

    def spill(self, block_stats: BlockStats) -> None:
        """Move one block's Hessians to a file (a no-op when it has none)."""
        if block_stats["q"].hessian is None:
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="workbench-hessians-"))
            weakref.finalize(self, shutil.rmtree, self._dir, True)
        self._count += 1
        path = self._dir / f"block-{self._count}.pt"
        with serialization_config.patch({"save.compute_crc32": False}):  # a scratch file: no checksum (it doubled the write time)
            torch.save({leader: s.hessian for leader, s in block_stats.items()}, path)
        for leader, s in list(block_stats.items()):
            block_stats[leader] = LinearStats(s.sq_norm, s.tokens)
        self._files[id(block_stats)] = (block_stats, path)

    def spilled(self, block_stats: BlockStats) -> bool:
        """Whether these block statistics have their Hessians in a file."""
        return id(block_stats) in self._files

    def files(self) -> list[Path]:
        """The spill files in use."""
        return [path for _, path in self._files.values()]

    def linear(self, group: str, block_stats: BlockStats) -> LinearStats:
        """A statistics group's statistics, with its block's Hessian read back from disk if it was spilled."""
        stats = block_stats[group]
        entry = self._files.get(id(block_stats))
        if entry is None:
            return stats
        if self._loaded[0] is not block_stats:
            self._loaded = (block_stats, torch.load(entry[1], map_location="cpu"))
        return LinearStats(stats.sq_norm, stats.tokens, self._loaded[1][group])

    def keep_only(self, stats: list[BlockStats] | None) -> None:
        """Delete the spilled Hessians of every block statistics not in `stats`."""
        keep = {id(b) for b in (stats or []) if b is not None}
        for key in [k for k in self._files if k not in keep]:
            self._files.pop(key)[1].unlink(missing_ok=True)
        self._loaded = (None, {})


class CalibrationCache:
    """Token windows and statistics for one model and calibration spec. `committed` are the statistics
    every pruned linear was pruned from; `dense` the dense model's one-pass statistics, computed once."""

    def __init__(self, loaded: Loaded, spec: CalibrationSpec, dense_model: Callable[[], ContextManager]):
        self.loaded = loaded
        self.spec = spec
        self.dense_model = dense_model
        self.hessians = HessianStore()
        self.committed: list[BlockStats] | None = None
        self.dense: list[BlockStats] | None = None
        self._ids: torch.Tensor | None = None
        self.generated = None  # the self-generated windows (workbench.engine.selfgen.Generated), when calibration is self

    def ids(self, progress: Progress | None = None, cancel: Cancel | None = None) -> torch.Tensor:
        """The calibration token windows (computed once): drawn from the text source, or the first `samples`
        of the dense model's self-generated windows (`workbench.engine.selfgen`)."""
        if self._ids is None:
            c = self.spec
            if c.generated is not None:
                from workbench.engine.selfgen import self_generated

                with self.dense_model():
                    self.use_generated(self_generated(self.loaded, c, progress, cancel))
            else:
                self._ids = calibration_windows(self.loaded.tokenizer, c.source, c.samples, c.seqlen, c.seed)
        return self._ids

    def use_generated(self, generated) -> None:
        """Calibrate on these self-generated windows (`workbench.engine.selfgen.Generated`: new, cached, or a
        session's read back); they must have the spec's shape."""
        c = self.spec
        if generated.ids.shape != (c.generated.windows, c.seqlen):
            raise WorkbenchError(f"calibration {c.source!r}", f"{tuple(generated.ids.shape)} token ids, expected "
                                                              f"{c.generated.windows} windows of {c.seqlen}")
        self.generated, self._ids = generated, generated.ids[: c.samples]

    def linear(self, ref: LinearRef, stats: list[BlockStats] | None = None) -> LinearStats:
        """A linear's statistics from `stats` (default: the committed ones)."""
        return self.hessians.linear(ref.group, (stats or self.committed)[ref.block])

    def channel_norms(self, ref: LinearRef, stats: list[BlockStats] | None = None) -> LinearStats:
        """A linear's input channel norms from `stats` (default: committed), without reading a spilled
        Hessian back (a Hessian still in memory comes along)."""
        return (stats or self.committed)[ref.block][ref.group]

    def has_hessian(self) -> bool:
        """Whether the committed statistics include Hessians."""
        first = next((b for b in self.committed or [] if b is not None), None)
        return first is not None and (self.hessians.spilled(first) or first["q"].hessian is not None)

    def capture(self, hessian: bool, before_block: Callable[[int], None], on_block: Callable[[int, BlockStats], None],
                progress: Progress | None, cancel: Cancel | None) -> list[BlockStats]:
        """Capture statistics in the spec's mode (see `workbench.engine.capture.capture`); each block's Hessians
        are spilled once `on_block` has used them. Nothing is committed: see `commit`."""

        def use_then_spill(i: int, block_stats: BlockStats) -> None:
            on_block(i, block_stats)
            self.hessians.spill(block_stats)

        try:
            return capture(self.loaded.model, self.ids(progress, cancel), self.loaded.device, self.spec.mode, hessian,
                           before_block=before_block, on_block=use_then_spill, progress=progress, cancel=cancel,
                           fallback=self.spec.expert_fallback, min_tokens=self.spec.expert_min_tokens)
        except BaseException:
            self.hessians.keep_only(self.committed)
            raise

    def commit(self, stats: list[BlockStats]) -> None:
        """Make `stats` the committed statistics (one-pass ones are also the dense statistics)."""
        self.committed = stats
        self.hessians.keep_only(stats)
        if self.spec.mode == ONE_PASS:
            self.dense = stats

    def dense_statistics(self, progress: Progress | None = None, cancel: Cancel | None = None) -> list[BlockStats]:
        """Statistics of the dense model at full size, computed once (`dense_model` swaps it in)."""
        if self.dense is None:
            with self.dense_model():
                self.dense = capture(self.loaded.model, self.ids(), self.loaded.device, ONE_PASS, hessian=False,
                                     progress=progress, cancel=cancel, fallback=self.spec.expert_fallback,
                                     min_tokens=self.spec.expert_min_tokens)
        return self.dense
