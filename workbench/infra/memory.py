"""Process memory: handing freed heap back to the OS, and the resident-set readings `workbench bench`
reports.

glibc's mmap threshold is dynamic: once a mapped block is freed, the threshold rises to its size (up to
32 MiB), so later tensors of a few MiB (activations, a linear's float32 copy, scores) come from the
heap, and what they leave when freed stays resident, scattered among live blocks, until a
`malloc_trim`. How far the threshold rises and how fragmented the heap gets depend on the exact
sequence of allocation sizes, which differs between machines (MKL's code path and workspace buffers,
thread count) and between stage orders: untrimmed, the same prune peaked 1.1 to 1.65 GiB, and the
probe suite's growing key/value caches left 900 MiB of holes. `configure_allocator` fixes the threshold
at `MMAP_THRESHOLD`: every tensor that large gets its own mapping, handed back to the OS when freed
(about 10 s more system time per prune for the page faults, which the time targets absorb).

A training loop is the exception: each step allocates and frees the same few-MiB tensors again (formed
weights, activations, gradients), and a fresh mapping costs a page fault per 4 KiB touched: at 1 MiB a
healing step on the embedded model took about a million faults and a third of its time. `heap_reuse`
lets such a loop reuse heap blocks and puts the fixed threshold back after it. Blocks a step frees and
does not reuse stay resident until reused (about 170 MiB over a healing step's peak on the embedded
model). With gradient checkpointing they also pile up from step to step (490 MiB over 100 steps, more
than the step's own activations), so that loop hands them back after each step (`release_freed_memory`:
faults then come once per page a step, not once per tensor); without it a step frees nearly all it
allocated, and the same trim only cost time (17 to 19% in the bench).
"""

from __future__ import annotations

import ctypes
import gc
from contextlib import contextmanager


M_MMAP_THRESHOLD = -3  # mallopt parameter
MMAP_THRESHOLD = 1 << 20  # a 576 x 576 float32 weight (1.3 MiB) and anything larger is mapped
REUSE_THRESHOLD = 32 << 20  # glibc's largest: under `heap_reuse`, only tensors such as a batch's logits are mapped


def _load_libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc
        return None


_libc = _load_libc()
_malloc_trim = _libc.malloc_trim if _libc is not None else None
_fixed = False  # whether `configure_allocator` fixed the threshold in this process


def configure_allocator() -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD` (which also stops its dynamic rise). Returns
    whether it was set (False without glibc). Safe to call more than once."""
    global _fixed
    _fixed = _fixed or (_libc is not None and bool(_libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)))
    return _fixed


@contextmanager
def heap_reuse():
    """Within: tensors under `REUSE_THRESHOLD` come from the heap, and a loop reuses what its last step
    freed. After: the fixed threshold is back and the freed heap is handed back. Nothing changes where
    the threshold was never fixed (glibc's dynamic one already reuses the heap)."""
    if not _fixed:
        yield
        return
    _libc.mallopt(M_MMAP_THRESHOLD, REUSE_THRESHOLD)
    try:
        yield
    finally:
        _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        release_freed_memory()


def release_freed_memory() -> None:
    """Hand freed heap back to the OS (glibc): free chunks inside the heap stay resident until trimmed."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile`); 0 where absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def settle() -> int:
    """Collect garbage, hand freed heap back and reset the peak resident set (VmHWM) to the current
    one, so a following peak counts what is alive now plus what comes after, not memory freed before.
    Returns the resident set in KiB."""
    gc.collect()
    release_freed_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return status_kib("VmRSS")
