"""Training-step cost of every distillation method relative to vanilla (resnet56 → resnet20, CIFAR-100).

One step = ``forward_train`` + backward of the summed losses + SGD step (the trainer's step), batch 64 of
random 3×32×32 images, 100 classes, on the CPU in one process with torch's default thread count. Supervision
modules are built directly from random tensors of the paper's shapes (no fitting): a 4096 × 64 codebook
(letKD-1 τ = 1, QuEST τ = 5) and, for letKD-2, 100 classes × 8 = 800 sub-classes in 60 LDA dimensions.
The methods are timed round-robin (median per method) so that load changes on a shared machine hit all of
them alike; process CPU time (all threads) is shown beside wall time.

``kd_tc``, ``letkd1_tc`` and ``letkd2_tc`` run with ``teacher.compile: true`` (the frozen teacher through
``torch.compile`` with freezing; the compilation, up to 30 s each, happens in the untimed warm-up steps).

Settings: ``LETKD_BENCH_STEPS`` (timed steps per method, default 10), ``LETKD_BENCH_METHODS`` (comma-separated
labels to time, vanilla is always added; default all), ``LETKD_BENCH_CHANNELS_LAST=1`` (every model and the
images in channels-last memory format, as ``train.channels_last: true`` does), ``LETKD_BENCH_PROFILE``
(comma-separated labels, e.g. ``letkd2``: print a torch.profiler table of one step of each),
``LETKD_BENCH_SYSTEM_MALLOC=1`` (leave glibc malloc as it is instead of what the trainer does by default,
``train.reuse_host_memory``), ``LETKD_BENCH_THREADS`` (intra-op threads; default torch's),
``LETKD_BENCH_PREVIOUS=0`` (leave out the ``<label>_prev`` rows: letkd, quest, crd and crd_kd as they were
implemented before the fused template loss and CRD's dense scoring, ``benchmarks/_previous.py``, timed in
the same rounds). The teacher is built as ``letkd run`` builds it by default (BatchNorm folded,
channels-last weights). Targets (:data:`TARGETS`): KD ≤ 1.5×, QuEST ≤ 2.2×, letKD-1 ≤ 2.6×, letKD-2 ≤ 2.9×,
CRD ≤ 2×, CRD+KD ≤ 2.1× vanilla. The header and the footer print the load average.
Run: ``LETKD_BENCH_METHODS=kd,quest,letkd1,letkd2,crd,crd_kd python -m benchmarks.run_all methods_step``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks._common import (
    Timing,
    apply_thread_setting,
    env_int,
    env_list,
    format_table,
    interleaved_median,
    trainer_memory_setting,
)
from benchmarks._previous import HAS_PREVIOUS, use_previous_implementation
from letkd.config import TrainConfig
from letkd.engine import build_optimizer
from letkd.methods import Distiller, MethodContext, get_method
from letkd.models import create_model
from letkd.supervision.codebook import Codebook
from letkd.supervision.subclass import SubclassCodebook

BATCH, NUM_CLASSES, INPUT_SIZE = 64, 100, (3, 32, 32)
TEACHER, STUDENT = "resnet56", "resnet20"
K_PEN, SUBCLASSES_PER_CLASS, LDA_DIMS, TEACHER_DIM = 4096, 8, 60, 64
#: step-time targets relative to vanilla (a ``_tc`` label shares its method's)
TARGETS = {"kd": 1.5, "quest": 2.2, "letkd1": 2.6, "letkd2": 2.9, "crd": 2.0, "crd_kd": 2.1}
#: labels run with ``teacher.compile`` (torch.compile of the frozen teacher; compiled in the warm-up steps)
COMPILED_TEACHER = ("kd_tc", "letkd1_tc", "letkd2_tc")
#: suffix of the rows timing a method's previous implementation (``benchmarks/_previous.py``)
PREVIOUS = "_prev"

_CODEBOOK_LAYER = {"kind": "codebook", "student_tap": "penultimate", "teacher_tap": "penultimate"}
_SUBCLASS_LAYER = {
    "kind": "subclass",
    "student_tap": "intermediate",
    "teacher_tap": "intermediate",
    "alpha": 1.0,
    "subclasses_per_class": SUBCLASSES_PER_CLASS,
    "lda_components": LDA_DIMS,
}


def random_codebook(generator: torch.Generator) -> Codebook:
    """A K_PEN × 64 codebook of non-negative centres (teacher penultimate maps are post-ReLU)."""
    return Codebook(torch.rand(K_PEN, TEACHER_DIM, generator=generator) * 4.0)


def random_subclasses(generator: torch.Generator) -> SubclassCodebook:
    """800 sub-classes in 60 LDA dims of 64-channel features, score-matrix rows summing to 1."""
    s = NUM_CLASSES * SUBCLASSES_PER_CLASS
    scores = torch.softmax(torch.randn(s, s, generator=generator) * 3.0, dim=1)
    return SubclassCodebook(
        lda_scalings=torch.randn(TEACHER_DIM, LDA_DIMS, generator=generator),
        lda_xbar=torch.randn(TEACHER_DIM, generator=generator),
        centers=torch.randn(s, LDA_DIMS, generator=generator),
        score_matrix=scores,
        num_classes=NUM_CLASSES,
    )


#: feature/relation baselines timed with their default params
NEW_BASELINES = ["vid", "ab", "fsp", "nst", "pkt", "rkd", "crd", "crd_kd", "simkd"]
#: the later baselines (methods/reviewkd.py, ofd.py, dist.py), timed with their default params
MODERN_BASELINES = ["reviewkd", "ofd", "dist"]
#: CIFAR-100's training-set size (CRD's memory banks)
NUM_TRAIN = 50_000


def method_specs(generator: torch.Generator) -> dict[str, tuple[str, dict[str, Any], list[nn.Module] | None]]:
    """Benchmark label → (registered method, params, supervision modules); a ``<label>_tc`` entry is the
    same method with ``teacher.compile`` (see :data:`COMPILED_TEACHER`)."""
    specs = {
        "vanilla": ("vanilla", {}, None),
        "kd": ("kd", {}, None),
        "fitnet": ("fitnet", {}, None),
        "at": ("at", {}, None),
        "sp": ("sp", {}, None),
        "dkd": ("dkd", {"beta": 2.0}, None),
        "quest": (
            "quest",
            {"layers": [{**_CODEBOOK_LAYER, "num_templates": K_PEN, "temperature": 5.0}]},
            [random_codebook(generator)],
        ),
        "letkd1": (
            "letkd",
            {"layers": [{**_CODEBOOK_LAYER, "alpha": 1.0, "num_templates": K_PEN, "temperature": 1.0}]},
            [random_codebook(generator)],
        ),
        "letkd2": (
            "letkd",
            {
                "layers": [
                    _SUBCLASS_LAYER,
                    {**_CODEBOOK_LAYER, "alpha": 1.0, "num_templates": K_PEN, "temperature": 1.0},
                ]
            },
            [random_subclasses(generator), random_codebook(generator)],
        ),
    }
    # the usual zoo with its defaults (RepDistiller / SimKD); ab and fsp are timed in their init stage
    # (epoch 0: the feature loss alone; their main stage is a vanilla step)
    specs.update({name: (name, {}, None) for name in NEW_BASELINES})
    # ReviewKD, OFD, DIST with their defaults; LSKD = KD (its authors' T 2, weight 9) and DKD on
    # standardized logits
    specs.update({name: (name, {}, None) for name in MODERN_BASELINES})
    specs["lskd"] = ("kd", {"logit_stand": True, "temperature": 2.0, "kd_weight": 9.0}, None)
    specs["dkd_ls"] = ("dkd", {"beta": 2.0, "logit_stand": True}, None)  # DKD on standardized logits
    for label in COMPILED_TEACHER:
        specs[label] = specs[label.removesuffix("_tc")]
    return specs


def build_distiller(
    method: str,
    params: dict[str, Any],
    supervision: list[nn.Module] | None,
    teacher: nn.Module,
    compile_teacher: bool = False,
) -> Distiller:
    """A fresh resnet20 student wrapped by ``method`` (vanilla gets no teacher) with its own copy of the
    teacher (preparing a teacher folds its BatchNorms and may compile it, in place; OFD reads them)."""
    torch.manual_seed(0)
    student = create_model(STUDENT, NUM_CLASSES)
    teacher = copy.deepcopy(teacher)
    context = MethodContext(
        NUM_CLASSES,
        INPUT_SIZE,
        supervision=supervision,
        compile_teacher=compile_teacher,
        num_train_samples=NUM_TRAIN,
    )
    cls = get_method(method)
    return cls.from_config(student, teacher if cls.requires_teacher else None, params, context).train()


def make_step(distiller: Distiller, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One training step as the trainer does it: zero grads, forward_train, sum losses, backward, SGD."""
    optimizer = build_optimizer(list(distiller.trainable_parameters()), TrainConfig())
    extra: dict[str, torch.Tensor] = {}
    if distiller.needs_sample_indices:  # CRD: indices and negatives as the contrast dataset gives them
        g = torch.Generator().manual_seed(1)
        index = torch.randperm(NUM_TRAIN, generator=g)[: len(labels)]
        negatives = torch.randint(0, NUM_TRAIN, (len(labels), distiller.num_negatives), generator=g)
        extra = {"index": index, "contrast_index": torch.cat([index[:, None], negatives], 1)}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        _, losses = distiller.forward_train(images, labels, **extra)
        torch.stack([v.float() for v in losses.values()]).sum().backward()
        optimizer.step()

    return step


def profile_step(label: str, step: Callable[[], None], rows: int = 15) -> None:
    """Print the operators taking the most CPU time in one step of ``label``."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"\nprofile of one {label} step (self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def timed_labels(wanted: list[str], specs: dict, previous: bool) -> list[str]:
    """``wanted`` with, after each label whose method keeps a previous implementation, ``<label>_prev``."""
    labels = []
    for label in wanted:
        labels.append(label)
        if previous and specs[label][0] in HAS_PREVIOUS and label not in COMPILED_TEACHER:
            labels.append(label + PREVIOUS)
    return labels


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` prints them."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    """Time every method's training step and print ms/step and the ratio to vanilla."""
    apply_thread_setting()
    steps = env_int("LETKD_BENCH_STEPS", 10)
    channels_last = bool(env_int("LETKD_BENCH_CHANNELS_LAST", 0))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, *INPUT_SIZE, generator=generator).contiguous(memory_format=memory_format)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)
    teacher = create_model(TEACHER, NUM_CLASSES).eval().requires_grad_(False)
    specs = method_specs(generator)
    wanted = list(dict.fromkeys(["vanilla", *env_list("LETKD_BENCH_METHODS", list(specs))]))
    unknown = [label for label in wanted if label not in specs]
    if unknown:
        raise ValueError(f"unknown method label(s) {unknown}; known: {', '.join(specs)}")
    memory = trainer_memory_setting()
    distillers = {}
    for label in timed_labels(wanted, specs, bool(env_int("LETKD_BENCH_PREVIOUS", 1))):
        method, params, sup = specs[label.removesuffix(PREVIOUS)]
        distiller = build_distiller(method, params, sup, teacher, label in COMPILED_TEACHER)
        distillers[label] = use_previous_implementation(distiller) if label.endswith(PREVIOUS) else distiller
    if channels_last:  # what train.channels_last does; otherwise the teacher alone is channels-last
        distillers = {label: d.to(memory_format=torch.channels_last) for label, d in distillers.items()}
    calls = {label: make_step(d, images, labels) for label, d in distillers.items()}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {BATCH} × 3×32×32, "
        f"{TEACHER} → {STUDENT}, {NUM_CLASSES} classes, median of {steps} interleaved steps"
        + (", channels-last" if channels_last else "")
        + f", {memory}; {load_average()} before"
    )
    timings = interleaved_median(calls, repeats=steps)
    print(f"{load_average()} after")
    print(format_table(TABLE_HEADERS, step_rows(timings)))
    for label in env_list("LETKD_BENCH_PROFILE", []):
        if label not in calls:
            timed = ", ".join(calls)
            raise ValueError(f"LETKD_BENCH_PROFILE: method {label!r} was not timed; timed: {timed}")
        profile_step(label, calls[label])


TABLE_HEADERS = ["method", "ms/step", "ratio", "CPU-time ratio", "target"]


def step_rows(timings: dict[str, Timing]) -> list[list[str]]:
    """Table rows: ms/step, wall and CPU-time ratios to vanilla, the target and whether it is met."""
    base = timings["vanilla"]
    rows = []
    for label, t in timings.items():
        target = None if label.endswith(PREVIOUS) else TARGETS.get(label.removesuffix("_tc"))
        ratio = t.wall / base.wall
        verdict = "" if target is None else f"≤ {target:g}× " + ("ok" if ratio <= target else "MISSED")
        rows.append([label, f"{t.wall * 1e3:.1f}", f"{ratio:.2f}×", f"{t.cpu / base.cpu:.2f}×", verdict])
    return rows


if __name__ == "__main__":
    main()
