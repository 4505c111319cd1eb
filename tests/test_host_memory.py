"""Host memory reuse (``train.reuse_host_memory``): large CPU tensors come from malloc's heap and freed
memory stays in the process, so the next step's tensors do not page-fault fresh pages in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from letkd.engine import host_memory

pytestmark = pytest.mark.skipif(
    host_memory._glibc_mallopt() is None, reason="malloc tuning exists only with glibc (Linux)"
)

# Allocates a 64 MiB tensor, frees it, and reports glibc's mallinfo2 counters around it.
_PROBE = r"""
import ctypes, json, sys
import torch
from letkd.engine.host_memory import reuse_freed_host_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
enabled = reuse_freed_host_memory() if sys.argv[1] == "reuse" else False
before = libc.mallinfo2()
t = torch.ones(2**24)
during = libc.mallinfo2()
del t
after = libc.mallinfo2()
print(json.dumps({
    "enabled": enabled,
    "mmapped_by_tensor": during.hblkhd - before.hblkhd,
    "heap_grown_by_tensor": during.arena - before.arena,
    "free_heap_after": after.fordblks,
}))
"""
TENSOR_BYTES = 4 * 2**24


def probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_large_tensors_come_from_the_heap_and_stay_after_free():
    if not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"):
        pytest.skip("glibc older than 2.33 has no mallinfo2 to observe the heap with")
    system, reused = probe("system"), probe("reuse")
    # the control: with glibc's defaults the 64 MiB block is its own mmap, returned to the OS on free
    assert not system["enabled"]
    assert system["mmapped_by_tensor"] >= TENSOR_BYTES
    assert system["free_heap_after"] < TENSOR_BYTES
    # reused: the block comes from the heap and, once freed, stays there for the next tensor
    assert reused["enabled"]
    assert reused["mmapped_by_tensor"] == 0
    assert reused["heap_grown_by_tensor"] >= TENSOR_BYTES // 2  # less when the heap had free space
    assert reused["free_heap_after"] >= TENSOR_BYTES


def test_enabling_twice_is_harmless_and_reported():
    assert host_memory.reuse_freed_host_memory() is True
    assert host_memory.reuse_freed_host_memory() is True
    assert host_memory.host_memory_reused() is True


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory, "_enabled", False)
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: None)
    assert host_memory.reuse_freed_host_memory() is False
    assert host_memory.host_memory_reused() is False
