"""Host (CPU) memory reuse: keep freed blocks in the process instead of returning them to the OS.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB on 64-bit Linux) with a fresh
``mmap`` and gives it back with ``munmap`` when freed. A CPU training step of a letKD layer creates and frees
several ``(B·H·W, K)`` maps of 67 MB each (K = 4096, resnet20 shapes); every one of them then page-faults
its 16 000 pages in again on every step, which cost about a third of a letKD-1 step on a 2-core machine.
With mmap disabled and trimming raised, such blocks come from the heap and are reused from step to step.
The price: the process keeps the memory of its peak step resident (as GPU caching allocators do).
"""

from __future__ import annotations

import ctypes
import sys

# glibc <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_enabled = False


def _glibc_mallopt():
    """glibc's ``mallopt``, or ``None`` where the C library is not glibc (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 — present in glibc only (musl's mallopt is a no-op)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def reuse_freed_host_memory() -> bool:
    """Make glibc ``malloc`` keep freed large blocks for reuse (process-wide, for the rest of the process).

    Sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, not from one ``mmap`` each) and
    ``M_TRIM_THRESHOLD`` to 2 GiB (freed memory at the top of the heap is not returned to the OS). Tensors
    allocated afterwards reuse freed pages instead of faulting fresh ones in; maths and results are unchanged.
    Where ``malloc`` cannot map more heap, glibc still falls back to ``mmap``.

    Returns whether the settings are in effect (``False`` on platforms without glibc; nothing is changed
    there). Calling it again is harmless. Config: ``train.reuse_host_memory`` (default on for CPU runs).
    """
    global _enabled
    if _enabled:
        return True
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    _enabled = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    return _enabled


def host_memory_reused() -> bool:
    """Whether :func:`reuse_freed_host_memory` has taken effect in this process."""
    return _enabled
