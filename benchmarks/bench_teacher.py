"""The frozen teacher's speed settings: a resnet56 forward (batch 64, CPU) under each of them, and what that
forward costs beside a resnet20 training step (the extra cost of a KD step).

Variants, each through :meth:`letkd.teacher.FrozenTeacher.prepare` as a method prepares its teacher:
nothing; BatchNorm folded (``teacher.fold_batchnorm``); channels-last weights (``teacher.channels_last``);
both (the default); both and ``torch.compile`` (``teacher.compile``; compiled in the untimed warm-up,
``LETKD_BENCH_COMPILE=0`` leaves it out). A resnet20 training step (forward, backward, SGD; the vanilla step
of ``methods_step``) is timed in the same rounds, so ``1 + teacher / step`` is what a KD step costs relative
to vanilla when the teacher forward is all it adds. Run: ``python -m benchmarks.run_all teacher``;
``LETKD_BENCH_STEPS`` (default 10) timed rounds.
"""

from __future__ import annotations

import copy

import torch

from benchmarks._common import (
    apply_thread_setting,
    env_int,
    format_table,
    interleaved_median,
    trainer_memory_setting,
)
from benchmarks.bench_methods_step import (
    BATCH,
    INPUT_SIZE,
    NUM_CLASSES,
    TEACHER,
    build_distiller,
    load_average,
    make_step,
)
from letkd.models import create_model
from letkd.teacher import FrozenTeacher

#: variant → FrozenTeacher.prepare keyword arguments
VARIANTS = {
    "no setting": {"fold_batchnorm": False, "channels_last": False},
    "fold_batchnorm": {"fold_batchnorm": True, "channels_last": False},
    "channels_last": {"fold_batchnorm": False, "channels_last": True},
    "both (default)": {"fold_batchnorm": True, "channels_last": True},
    "both + compile": {"fold_batchnorm": True, "channels_last": True, "compile": True},
}


def main() -> None:
    """Time the teacher variants and the student step interleaved; print ms and ratios."""
    apply_thread_setting()
    steps = env_int("LETKD_BENCH_STEPS", 10)
    memory = trainer_memory_setting()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, *INPUT_SIZE, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)
    model = create_model(TEACHER, NUM_CLASSES).eval()
    variants = dict(VARIANTS)
    if not env_int("LETKD_BENCH_COMPILE", 1):
        del variants["both + compile"]
    calls = {"resnet20 training step": make_step(build_distiller("vanilla", {}, None, model), images, labels)}
    for name, settings in variants.items():
        teacher = FrozenTeacher(copy.deepcopy(model))
        teacher.prepare(**settings)
        calls[f"{TEACHER} forward, {name}"] = lambda teacher=teacher: teacher.logits(images)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {BATCH}, median of {steps} "
        f"interleaved rounds, {memory}; {load_average()} before"
    )
    timings = interleaved_median(calls, repeats=steps, warmup=3)
    print(f"{load_average()} after")
    step = timings.pop("resnet20 training step")
    default = timings[f"{TEACHER} forward, both (default)"]
    rows = [["resnet20 training step", f"{step.wall * 1e3:.1f}", "", ""]]
    rows += [
        [label, f"{t.wall * 1e3:.1f}", f"{t.wall / default.wall:.2f}×", f"{1 + t.wall / step.wall:.2f}×"]
        for label, t in timings.items()
    ]
    print(format_table(["what", "ms", "vs default teacher", "1 + teacher / student step"], rows))
