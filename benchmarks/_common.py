"""Helpers shared by the method, accuracy and data benchmarks: env settings, interleaved timing, tables."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


def env_int(name: str, default: int) -> int:
    """Integer setting from the environment variable ``name`` (``default`` when unset or empty)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    """Comma-separated setting from the environment variable ``name`` (``default`` when unset or empty)."""
    items = [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]
    return items or list(default)


def apply_thread_setting() -> None:
    """``LETKD_BENCH_THREADS=n``: run with ``n`` intra-op threads instead of torch's default."""
    threads = env_int("LETKD_BENCH_THREADS", 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def trainer_memory_setting() -> str:
    """Apply the trainer's default host-memory setting (``train.reuse_host_memory``) unless
    ``LETKD_BENCH_SYSTEM_MALLOC=1``; return a short description for the benchmark's header."""
    from letkd.engine.host_memory import reuse_freed_host_memory

    if env_int("LETKD_BENCH_SYSTEM_MALLOC", 0):
        return "system malloc settings"
    return "freed host memory reused" if reuse_freed_host_memory() else "system malloc (no glibc)"


@dataclass(frozen=True)
class Timing:
    """Median wall-clock and process-CPU seconds of one timed call (CPU time sums all threads)."""

    wall: float
    cpu: float


def interleaved_median(
    calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[str, Timing]:
    """Median :class:`Timing` of each no-argument call in ``calls``, timed round-robin.

    Every round runs each call once, in order, so a load change on a shared machine hits all of them
    alike; the first ``warmup`` rounds are not timed.
    """
    walls: dict[str, list[float]] = {name: [] for name in calls}
    cpus: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(warmup + repeats):
        for name, call in calls.items():
            w0, c0 = time.perf_counter(), time.process_time()
            call()
            w1, c1 = time.perf_counter(), time.process_time()
            if round_index >= warmup:
                walls[name].append(w1 - w0)
                cpus[name].append(c1 - c0)
    return {name: Timing(statistics.median(walls[name]), statistics.median(cpus[name])) for name in calls}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; cells are shown with ``str`` (format numbers before passing them)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])
