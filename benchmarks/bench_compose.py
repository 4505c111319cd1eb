"""What a composition costs: training steps of AT+KD and FitNet + a KD layer composed (``method: compose``,
one teacher and one student forward per step) beside their parts and beside the parts run one after the
other (two teacher and two student forwards), resnet56 → resnet20, batch 64, CIFAR-100 shapes, on the CPU.

The composed step should cost about the parts' extra costs added to one vanilla step with the teacher
forward counted once — what ``letkd paper`` assumes for a composition (``teacher_forward`` in
``paper_results.yaml``) — and less than the parts one after the other.
Settings: ``LETKD_BENCH_STEPS`` (timed steps, default 10). Run: ``python -m benchmarks.run_all compose``.
"""

from __future__ import annotations

import torch

from benchmarks._common import env_int, format_table, interleaved_median
from benchmarks.bench_methods_step import (
    _CODEBOOK_LAYER,
    BATCH,
    INPUT_SIZE,
    K_PEN,
    NUM_CLASSES,
    TEACHER,
    build_distiller,
    make_step,
    random_codebook,
)
from letkd.models import create_model

LETKD1 = {"layers": [{**_CODEBOOK_LAYER, "num_templates": K_PEN}]}


def main() -> None:
    """Time the steps and print ms/step and the ratio to vanilla."""
    import os

    steps = env_int("LETKD_BENCH_STEPS", 10)
    g = torch.Generator().manual_seed(0)
    images, labels = (
        torch.randn(BATCH, *INPUT_SIZE, generator=g),
        torch.randint(0, NUM_CLASSES, (BATCH,), generator=g),
    )
    teacher = create_model(TEACHER, NUM_CLASSES).eval().requires_grad_(False)
    specs = {
        "vanilla": ("vanilla", {}, None),
        "at": ("at", {}, None),
        "kd": ("kd", {}, None),
        "at+kd composed": ("compose", {"parts": [{"method": "at"}, {"method": "kd"}]}, None),
        "fitnet": ("fitnet", {}, None),
        "letkd1": ("letkd", LETKD1, [random_codebook(g)]),
        "fitnet+letkd1 composed": (
            "compose", {"parts": [{"method": "fitnet"}, {"method": "letkd", "params": LETKD1}]},
            [random_codebook(g)],
        ),
    }  # fmt: skip
    calls = {
        label: make_step(build_distiller(method, params, sup, teacher), images, labels)
        for label, (method, params, sup) in specs.items()
    }
    at, kd = calls["at"], calls["kd"]
    calls["at then kd (two steps)"] = lambda: (at(), kd())
    times = interleaved_median(calls, steps)
    base = times["vanilla"].wall
    rows = [[label, f"{t.wall * 1000:.1f}", f"{t.wall / base:.2f}×"] for label, t in times.items()]
    print(f"{steps} interleaved steps, batch {BATCH}, {TEACHER} → resnet20, load {os.getloadavg()[0]:.1f}")
    print(format_table(["step", "ms", "ratio to vanilla"], rows))
