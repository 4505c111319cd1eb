"""Inference cost of the KD layers a letKD student keeps, relative to the plain student (CPU).

Every row is a baked student (``letkd.deploy.bake``) in eval mode under ``torch.inference_mode``: KD layers at
the penultimate tap (K = 64 and K = 4096 = letKD-1), at the intermediate tap (8 sub-classes per class: 800 on
CIFAR-100, 8000 on ImageNet), both (letKD-2), and a QuEST template head (dropped by ``bake``: nothing is
deployed). Each is run in two forms — *before*: the reference form (``bake(model, form="reference")``, the
training ``KDLayer`` inside), *after*: the inference form that ``bake`` ships (``InferenceKDLayer``: BatchNorm
folded in, score map in cache-sized chunks) — and three ways: eager, ``torch.compile`` and the exported
``.pt2`` program (``letkd.deploy.export_program``, saved, loaded, ``.module()``). Models: resnet20 on
32×32 inputs (100 classes) and torchvision resnet18 on 224×224 inputs (1000 classes); batch 1 and 64.

Within one (model, run, batch) group every variant and the plain student are timed round-robin; a ratio is
the median over rounds of ``time(variant) / time(plain)`` in the same round, so load changes hit both sides
alike. ``MAC bound`` is the ratio of multiply-accumulates (what compute alone would cost). Parameters and
MACs are those of the shipped form (``letkd.cost.deployed_cost``).

Settings: ``LETKD_BENCH_DEPLOY_FULL=1`` (the whole table: both models × eager, compile, pt2 × batch 1, 64;
about 40 minutes on 2 quiet cores, mostly compiling); without it resnet20 eager and pt2 at batch 1 and 64 and
resnet18 eager at batch 1 (a few minutes). ``LETKD_BENCH_DEPLOY_MODELS`` (``resnet20,resnet18``),
``LETKD_BENCH_DEPLOY_RUNS`` (``eager,compile,pt2``), ``LETKD_BENCH_DEPLOY_BATCHES`` (``1,64``) pick a part;
``LETKD_BENCH_ROUNDS`` (timed rounds per group, default 40 at batch 1, 12 above); ``LETKD_BENCH_STAT=min``
(ratios of the fastest calls instead of the median per-round ratio: steadier on a loaded machine);
``LETKD_BENCH_PROFILE=1`` prints a ``torch.profiler`` table of resnet20 letKD-1 at batch 64 in both forms.
Targets (resnet20, eager): letKD-1 ≤ 1.8× at batch 1 and ≤ 2.0× at batch 64, letKD-2 ≤ 2.2× at batch 64.
Run: ``python -m benchmarks.run_all deploy`` (full table:
``LETKD_BENCH_DEPLOY_FULL=1 python -m benchmarks.run_all deploy``).
"""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from benchmarks._common import env_int, env_list, format_table
from letkd.cost import deployed_cost
from letkd.deploy import bake, export_program
from letkd.graft import graft
from letkd.layers import KDLayer, TemplateHead
from letkd.models import create_model, get_taps
from letkd.taps import FeatureTaps


@dataclass(frozen=True)
class Student:
    """A student network as the benchmark builds it."""

    name: str
    num_classes: int
    size: int

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)


STUDENTS = {
    "resnet20": Student("resnet20", 100, 32),
    "resnet18": Student("torchvision:resnet18", 1000, 224),
}
#: variant → KD layers kept: (tap, kind, K); K None = 8 sub-classes per class
VARIANTS: dict[str, list[tuple[str, type[nn.Module], int | None]]] = {
    "penultimate K=64": [("penultimate", KDLayer, 64)],
    "letKD-1 (penultimate K=4096)": [("penultimate", KDLayer, 4096)],
    "intermediate 8/class": [("intermediate", KDLayer, None)],
    "letKD-2 (both)": [("intermediate", KDLayer, None), ("penultimate", KDLayer, 4096)],
    "QuEST head K=4096": [("penultimate", TemplateHead, 4096)],
}
#: (variant, batch) → the target ratio on resnet20, eager
TARGETS = {
    ("letKD-1 (penultimate K=4096)", 1): 1.8,
    ("letKD-1 (penultimate K=4096)", 64): 2.0,
    ("letKD-2 (both)", 64): 2.2,
}
#: column → bake form: today's reference form before, the shipped inference form after
FORMS = {"before": "reference", "after": "fast"}


def build_student(student: Student, variant: str | None) -> nn.Module:
    """The student with the variant's KD layers grafted, BatchNorm statistics from one batch, eval mode."""
    torch.manual_seed(0)
    model = create_model(student.name, student.num_classes)
    taps = get_taps(model)
    for tap, kind, templates in VARIANTS.get(variant, []):
        channels = _channels(model, taps[tap], student.input_size)
        graft(model, tap, kind(channels, templates or 8 * student.num_classes))
    with torch.no_grad():
        model.train()(torch.randn(4, *student.input_size))
    return model.eval()


def _channels(model: nn.Module, path: str, input_size: tuple[int, ...]) -> int:
    """Channels of the output of ``model``'s submodule ``path``."""
    with torch.no_grad(), FeatureTaps(model.eval(), [path], stop_after_last=True) as taps:
        return taps(torch.zeros(1, *input_size))[path].shape[1]


def runnable(model: nn.Module, form: str, run: str, input_size: tuple[int, ...]) -> Callable:
    """The baked ``model`` in ``form`` as ``run`` executes it: eager, torch.compile or the loaded .pt2."""
    if run == "pt2":
        buffer = io.BytesIO()
        torch.export.save(export_program(model, input_size, form=FORMS[form]), buffer)
        buffer.seek(0)
        return torch.export.load(buffer).module()
    baked = bake(model, FORMS[form]).eval()
    if run != "compile":
        return baked
    # every variant × batch size is one more compiled graph of the same forward code: let them all stay
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(baked, dynamic=False)


def time_group(calls: dict[tuple[str, str], Callable], x: torch.Tensor, rounds: int) -> dict:
    """``{key: (median ratio to ("plain", "-"), median seconds)}`` timed round-robin on input ``x``."""
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    with torch.inference_mode():
        for call in calls.values():  # warm-up (compiles a torch.compile model)
            call(x), call(x)
        for _ in range(rounds):
            for key, call in calls.items():
                start = time.perf_counter()
                call(x)
                times[key].append(time.perf_counter() - start)
    plain = times[("plain", "-")]
    if env_list("LETKD_BENCH_STAT", ["median"]) == ["min"]:  # the least disturbed calls of a loaded machine
        return {key: (min(samples) / min(plain), min(samples)) for key, samples in times.items()}
    return {
        key: (statistics.median(t / p for t, p in zip(samples, plain)), statistics.median(samples))
        for key, samples in times.items()
    }


def measure(student_key: str, runs: list[str], batches: list[int]) -> list[list[str]]:
    """Rows of the table for one student: every variant × run, ratios before/after per batch."""
    student = STUDENTS[student_key]
    models = {variant: build_student(student, variant) for variant in [None, *VARIANTS]}
    costs = {variant: deployed_cost(model, student.input_size) for variant, model in models.items()}
    plain_macs = costs[None]["macs"]
    rows = []
    for run in runs:
        start = time.perf_counter()
        calls = {("plain", "-"): runnable(models[None], "after", run, student.input_size)}
        for variant in VARIANTS:
            kept_forms = FORMS if costs[variant]["extra_macs"] else ("after",)
            for form in kept_forms:
                calls[(variant, form)] = runnable(models[variant], form, run, student.input_size)
        prepared = time.perf_counter() - start
        results = {}
        for batch in batches:
            rounds = env_int("LETKD_BENCH_ROUNDS", 40 if batch == 1 else 12)
            results[batch] = time_group(calls, torch.randn(batch, *student.input_size), rounds)
        label = f"{run} ({prepared:.0f} s to prepare)" if run != "eager" else run
        plain_ms = " / ".join(f"{results[b][('plain', '-')][1] * 1e3:.1f}" for b in batches)
        rows.append([f"plain ({plain_ms} ms)", "", "", "1.00", label, *(["1.00"] * 2 * len(batches))])
        for variant in VARIANTS:
            cost = costs[variant]
            cells = []
            for batch in batches:
                after = results[batch][(variant, "after")][0]
                before = results[batch].get((variant, "before"), (after,))[0]
                targeted = student_key == "resnet20" and run == "eager"
                target = TARGETS.get((variant, batch)) if targeted else None
                mark = f" (≤ {target})" if target else ""
                cells += [f"{before:.2f}", f"{after:.2f}{mark}"]
            rows.append(
                [variant, f"{cost['extra_parameters']:,}", f"{cost['extra_macs'] / 1e6:.1f} M",
                 f"{cost['macs'] / plain_macs:.2f}", run, *cells]
            )  # fmt: skip
    return rows


def profile(form: str) -> None:
    """torch.profiler table of resnet20 letKD-1, batch 64, eager, in ``form``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profiler

    student = STUDENTS["resnet20"]
    letkd1 = build_student(student, "letKD-1 (penultimate K=4096)")
    model = runnable(letkd1, form, "eager", student.input_size)
    x = torch.randn(64, *student.input_size)
    with torch.inference_mode():
        model(x)
        with run_profiler(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                model(x)
    print(f"\nprofile, resnet20 letKD-1 batch 64, {form} form (5 calls):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    """Print the cost table (ratios to the plain student, before and after) and the load."""
    full = env_int("LETKD_BENCH_DEPLOY_FULL", 0)
    models = env_list("LETKD_BENCH_DEPLOY_MODELS", list(STUDENTS))
    runs = env_list("LETKD_BENCH_DEPLOY_RUNS", ["eager", "compile", "pt2"] if full else ["eager", "pt2"])
    batches = [int(b) for b in env_list("LETKD_BENCH_DEPLOY_BATCHES", ["1", "64"])]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    fastest = env_list("LETKD_BENCH_STAT", ["median"]) == ["min"]
    stat = "ratios of the fastest calls" if fastest else "median per-round ratios"
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}, {stat}, load average {load}")
    for key in models:
        if key not in STUDENTS:
            known = ", ".join(STUDENTS)
            raise ValueError(f"LETKD_BENCH_DEPLOY_MODELS: unknown model {key!r} (known: {known})")
        student = STUDENTS[key]
        # without the full table the ImageNet-size model runs eager at batch 1 only (a batch of 64 224×224
        # images takes seconds per call on two cores)
        quick = key == "resnet18" and not full and "LETKD_BENCH_DEPLOY_RUNS" not in os.environ
        model_runs = ["eager"] if quick else runs
        model_batches = [1] if quick and "LETKD_BENCH_DEPLOY_BATCHES" not in os.environ else batches
        rows = measure(key, model_runs, model_batches)
        headers = ["KD layers kept", "extra params", "extra MACs", "MAC bound", "run"]
        for batch in model_batches:
            headers += [f"b{batch} before", f"b{batch} after"]
        size = f"{student.size}×{student.size}"
        print(f"\n{student.name}, {size} inputs, {student.num_classes} classes: time / plain student's")
        print(format_table(headers, rows))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if env_int("LETKD_BENCH_PROFILE", 0):
        for form in FORMS:
            profile(form)


if __name__ == "__main__":
    main()
