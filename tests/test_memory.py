"""Memory: freed heap goes back to the OS, a stage's peak starts from what is alive, the dense reference
probes swap weights by reference, and the probe budget is computed and enforced."""

import ctypes
import json
import subprocess
import sys

import pytest
import torch

from tests.tiny import tiny_llama
from workbench.cli import bench
from workbench.cli.main import build_parser
from workbench.domain.plan import Plan
from workbench.engine.facade import Engine
from workbench.infra.memory import settle, status_kib
from workbench.probes import heldout

glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux") or status_kib("VmRSS") == 0,
                                 reason="needs Linux /proc and glibc")
MIB = 1 << 20


def _heap_garbage(blocks: int = 400, size: int = MIB // 2) -> None:
    """Leave `blocks * size` bytes of freed but resident memory inside the glibc heap: free a mapped
    block of twice `size` (a dynamic mmap threshold rises past `size`; a fixed one is above it), then
    allocate, touch and free blocks of `size` (from the heap), pinned below a live chunk so the heap top
    cannot shrink."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(libc.malloc(2 * size))
    chunks = [libc.malloc(size) for _ in range(blocks + 1)]
    pin = chunks.pop()  # carved from the heap top after the others (a small one could fill an old hole)
    for chunk in chunks:
        ctypes.memset(chunk, 1, size)
    for chunk in chunks:
        libc.free(chunk)
    _heap_garbage.pins.append(pin)  # kept: the garbage stays below it


_heap_garbage.pins = []


@glibc_linux
def test_settle_hands_back_what_an_earlier_stage_freed():
    before = status_kib("VmRSS")
    _heap_garbage()
    assert status_kib("VmRSS") - before > 150 * 1024  # freed, yet resident
    resident = settle()
    assert resident - before < 50 * 1024
    assert status_kib("VmHWM") - resident < 10 * 1024  # the next peak starts here, not at the garbage


@glibc_linux
def test_a_stage_peak_does_not_include_the_previous_stage_leftovers():
    settle()
    _heap_garbage()  # the "previous stage"
    resident = settle()
    buffer = torch.ones(64 * MIB // 4)  # the "stage": 64 MiB alive at its peak
    peak = status_kib("VmHWM") - resident
    del buffer
    assert 60 * 1024 <= peak < 100 * 1024


FRESH_PROCESS = """
import ctypes, sys
from workbench.infra.memory import configure_allocator, settle, status_kib
if sys.argv[1] == "configured":
    assert configure_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 8 << 20
libc.free(libc.malloc(2 * size))  # raises a dynamic mmap threshold past `size`
resident = settle()
chunks = [libc.malloc(size) for _ in range(25)]
for chunk in chunks:
    ctypes.memset(chunk, 1, size)
for chunk in chunks[:-1]:  # the last one pins the heap top
    libc.free(chunk)
print((status_kib("VmRSS") - resident) // 1024)
"""


@glibc_linux
@pytest.mark.parametrize("allocator", ["configured", "default"])
def test_after_configuring_the_allocator_large_tensors_go_back_to_the_os_when_freed(allocator):
    """In a fresh process (a heap with free space would serve the blocks before any mapping)."""
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS, allocator], capture_output=True, text=True, check=True)
    left_mib = int(out.stdout)
    if allocator == "configured":
        assert left_mib < 20
    else:
        assert left_mib > 150  # the dynamic threshold keeps 24 freed 8 MiB blocks resident


HEAP_REUSE = """
import ctypes
from workbench.infra.memory import configure_allocator, heap_reuse, settle, status_kib
assert configure_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 8 << 20


def touched(n):
    chunks = [libc.malloc(size) for _ in range(n)]
    for chunk in chunks:
        ctypes.memset(chunk, 1, size)
    return chunks


def grown_mib(since):
    return (status_kib("VmRSS") - since) // 1024


resident = settle()
with heap_reuse():
    *freed, pin = touched(25)  # the pin (carved last) keeps the heap top from shrinking
    for chunk in freed:
        libc.free(chunk)
    kept = grown_mib(resident)
    again = touched(24)  # the next "step": the same sizes again
    reused = grown_mib(resident) - kept
    for chunk in again + [pin]:  # the loop's blocks all freed by its end
        libc.free(chunk)
after = grown_mib(resident)
*mapped, last = touched(25)  # the fixed threshold again: mapped, and unmapped when freed
for chunk in mapped:
    libc.free(chunk)
print(kept, reused, after, grown_mib(resident) - after)
"""


@glibc_linux
def test_heap_reuse_keeps_freed_blocks_for_the_next_step_then_puts_the_fixed_threshold_back():
    """In a fresh process with the threshold fixed, as an Engine fixes it."""
    out = subprocess.run([sys.executable, "-c", HEAP_REUSE], capture_output=True, text=True, check=True)
    kept, reused, after, mapped = map(int, out.stdout.split())
    assert kept > 150  # 24 freed 8 MiB blocks stay in the heap within
    assert reused < 20  # and serve the next 24 without new memory
    assert after < 20  # handed back on leaving
    assert mapped < 20  # afterwards freed blocks go back to the OS again


def test_dense_reference_probes_run_on_the_kept_dense_weights_without_copies():
    model, tokenizer = tiny_llama(seed=0)
    engine = Engine.from_model(model, tokenizer)
    engine.prune(Plan(method="magnitude", sparsity=0.5))
    pruned = {name: (ref.module.weight.data_ptr(), ref.module.weight.detach().clone()) for name, ref in engine.refs.items()}
    with engine.dense_weights():
        for name, ref in engine.refs.items():
            assert ref.module.weight.data_ptr() == engine.bank.dense(name).data_ptr(), name
    for name, ref in engine.refs.items():
        assert ref.module.weight.data_ptr() == pruned[name][0], name
        assert torch.equal(ref.module.weight, pruned[name][1]), name
        assert (ref.module.weight == 0).any(), name


def test_probe_working_set_is_three_batches_of_float32_logits():
    expected = 3 * heldout.BATCH * heldout.SEQLEN * 1000 * 4 / MIB
    assert bench.probe_activation_mib(1000, torch.float32) == pytest.approx(expected)
    assert bench.probe_activation_mib(1000, torch.bfloat16) == pytest.approx(expected)  # cross-entropy runs in float32


def _run(tiny_model_dir, only: str, capsys) -> tuple[int, dict]:
    args = build_parser().parse_args(["bench", "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32",
                                      "--samples", "2", "--seqlen", "32", "--only", only, "--json"])
    code = bench.run_bench(args)
    return code, json.loads(capsys.readouterr().out)


def test_probe_stages_have_a_budget_and_miss_it_with_exit_code_1(tiny_model_dir, capsys, monkeypatch):
    code, report = _run(tiny_model_dir, "probe-dense,perplexity", capsys)
    meta, rows = report["meta"], {r["stage"]: r for r in report["stages"]}
    weights = meta["dense_weight_mib"]
    assert meta["probe_memory_budget_mib"] > 1.5 * weights
    for stage in ("probe-dense", "perplexity"):
        assert f"<= {meta['probe_memory_budget_mib']:.0f} MiB" in rows[stage]["target"]
        assert rows[stage]["ok"] is (rows[stage]["peak_mib"] <= meta["probe_memory_budget_mib"])
        assert rows[stage]["start_mib"] <= rows[stage]["peak_mib"]
    assert code == (0 if all(r["ok"] is not False for r in rows.values()) else 1)

    monkeypatch.setattr(bench, "probe_activation_mib", lambda vocab, dtype: -1e6)  # a budget nothing meets
    code, report = _run(tiny_model_dir, "perplexity", capsys)
    assert code == 1
    assert [r["ok"] for r in report["stages"] if r["stage"] == "perplexity"] == [False]
