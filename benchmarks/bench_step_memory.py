"""Peak host memory (RSS) of training steps, each method in a fresh process (resnet56 → resnet20, batch 64).

For each label (``LETKD_BENCH_METHODS``, default ``letkd2``; labels of ``methods_step``, a method with a
previous implementation is measured with it too, as ``<label>_prev``) a child process builds the distiller
exactly as ``methods_step`` does, records its peak RSS, runs ``LETKD_BENCH_STEPS`` training steps (default
3) and records the peak again: the difference is what the steps add on top of the models, the supervision
and the batch. The allocator setting is the trainer's (``train.reuse_host_memory``: freed blocks stay in the
process, so the peak is reached again on every step) unless ``LETKD_BENCH_SYSTEM_MALLOC=1``.

Run: ``python -m benchmarks.run_all step_memory``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import torch

from benchmarks._common import env_int, env_list, format_table, trainer_memory_setting
from benchmarks._previous import use_previous_implementation
from benchmarks.bench_methods_step import (
    BATCH,
    INPUT_SIZE,
    NUM_CLASSES,
    PREVIOUS,
    TEACHER,
    build_distiller,
    load_average,
    make_step,
    method_specs,
    timed_labels,
)
from letkd.models import create_model


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(label: str, steps: int) -> dict[str, float]:
    """Build ``label``'s distiller and run ``steps`` steps: peak RSS before and after (in a fresh process)."""
    trainer_memory_setting()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, *INPUT_SIZE, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)
    teacher = create_model(TEACHER, NUM_CLASSES).eval().requires_grad_(False)
    method, params, supervision = method_specs(generator)[label.removesuffix(PREVIOUS)]
    distiller = build_distiller(method, params, supervision, teacher)
    if label.endswith(PREVIOUS):
        use_previous_implementation(distiller)
    step = make_step(distiller, images, labels)
    before = peak_rss_mib()
    for _ in range(steps):
        step()
    return {"before": before, "after": peak_rss_mib()}


def main() -> None:
    """Measure every label in its own process and print the table."""
    steps = env_int("LETKD_BENCH_STEPS", 3)
    wanted = env_list("LETKD_BENCH_METHODS", ["letkd2"])
    specs = method_specs(torch.Generator().manual_seed(0))
    unknown = [label for label in wanted if label not in specs]
    if unknown:
        raise ValueError(f"unknown method label(s) {unknown}; known: {', '.join(specs)}")
    print(f"peak RSS of {steps} training steps, batch {BATCH}, one process per row; {load_average()}")
    rows = []
    for label in timed_labels(wanted, specs, previous=True):
        code = (
            "import json, benchmarks.bench_step_memory as m; "
            f"print(json.dumps(m.measure({label!r}, {steps})))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy()
        )
        if out.returncode != 0:
            raise RuntimeError(f"{label}: the measuring process failed:\n{out.stderr[-2000:]}")
        peak = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            [label, f"{peak['before']:.0f}", f"{peak['after']:.0f}", f"{peak['after'] - peak['before']:.0f}"]
        )
    print(
        format_table(
            ["method", "peak RSS before the steps (MiB)", "peak RSS after (MiB)", "added by the steps"], rows
        )
    )
