"""GPU training speed: images/s per method and its ratio to vanilla, packing of runs, the epoch target.

1. **Steps** — vanilla, KD, QuEST, letKD-1, letKD-2 (resnet56 → resnet20, 3×32×32 images, 100 classes,
   K = 4096 penultimate codebook, 800 sub-classes; supervision modules from random tensors, as
   ``benchmarks/bench_methods_step.py`` builds them) at batch 64 and 128, in three settings: ``fp32``
   (eager, float32), ``bf16`` (autocast bf16) and ``bf16+tc`` (bf16 with ``teacher.compile``); models and
   images channels-last in all three. Timed with CUDA events over ``steps`` steps after a warm-up.
2. **Packing** — N processes running the same step loop (vanilla, letKD-1; batch 64, bf16) side by side for
   a fixed window: images/s per run and in total, N = 1, 2, 4, 8, … until the total stops growing.
3. **Epoch** — one epoch of vanilla resnet20 through the engine's ``Trainer.train_epoch`` over 50,000
   synthetic CIFAR-100-sized images held on the GPU (``data.on_device``), bf16, batch 64 and 128.

Each part stops at the stage's deadline (``--budget-s``); what was not measured is listed as such. Results
go to ``<out>/speed.json`` and ``<out>/speed.md``. ``--dry-run`` runs the same code on the CPU with tiny
sizes (a check of the code path, not a measurement).
Run: ``python -m benchmarks.gpu.speed --budget-s 100 --out runs/gpu/speed``.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import queue
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import format_table
from benchmarks.bench_methods_step import make_step, method_specs
from letkd.utils import atomic_write_text

METHODS = ("vanilla", "kd", "quest", "letkd1", "letkd2")
SETTINGS = ("bf16", "fp32", "bf16+tc")
TARGETS = {"kd": 1.3, "letkd1": 2.0}  # ratio to vanilla at batch 64
EPOCH_TARGET_S = 4.0


class Clock:
    """Seconds left before the deadline; a part checks it before each measurement."""

    def __init__(self, budget_s: float) -> None:
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return self.end - time.monotonic()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, steps: int, warmup: int) -> float:
    """Median seconds per call of ``step`` over ``steps`` timed calls (CUDA events on the GPU)."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_distiller(method: str, params: dict, supervision, teacher: torch.nn.Module, compile_teacher: bool):
    """A fresh resnet20 student (seeded) wrapped by ``method``; vanilla gets no teacher."""
    from letkd.methods import MethodContext, get_method
    from letkd.models import create_model

    torch.manual_seed(0)
    student = create_model("resnet20", 100)
    if compile_teacher:  # compiling a feature method's teacher changes its modules: use a copy
        teacher = copy.deepcopy(teacher)
    context = MethodContext(100, (3, 32, 32), supervision=supervision, compile_teacher=compile_teacher)
    cls = get_method(method)
    return cls.from_config(student, teacher if cls.requires_teacher else None, params, context).train()


def build_step(label: str, batch: int, setting: str, device: torch.device, teacher: torch.nn.Module):
    """A no-argument training step of method ``label`` (see bench_methods_step) in ``setting``."""
    generator = torch.Generator().manual_seed(0)
    method, params, supervision = method_specs(generator)[label]
    distiller = build_distiller(method, params, supervision, teacher, compile_teacher=setting == "bf16+tc")
    distiller = distiller.to(device).to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, 32, 32, generator=generator).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 100, (batch,), generator=generator).to(device)
    plain = make_step(distiller, images, labels)
    if setting == "fp32":
        return plain

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            plain()

    return step


def plan_steps(batches: list[int], settings: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows to measure, batch-major (the first batch size first), ``seconds`` None until measured."""
    return [
        {"setting": s, "batch": b, "method": m, "seconds": None, "images_per_s": None, "ratio": None}
        for b in batches
        for s in settings
        for m in METHODS
    ]


def measure_steps(rows: list[dict], device, clock: Clock, steps: int, warmup: int, save) -> None:
    """Fill ``rows`` (see :func:`plan_steps`) in place, calling ``save()`` after each measurement; a row
    is left unmeasured when the clock has less than a build and a measurement left (compiling: 60 s)."""
    from letkd.models import create_model

    teacher = create_model("resnet56", 100).eval().requires_grad_(False)
    for row in rows:
        compiled = row["setting"] == "bf16+tc"
        if clock.left() < (60 if compiled else 5):
            continue
        step = build_step(row["method"], row["batch"], row["setting"], device, teacher)
        row["seconds"] = time_steps(step, device, steps, warmup + (2 if compiled else 0))
        row["images_per_s"] = row["batch"] / row["seconds"]
        base = next(
            r
            for r in rows
            if (r["setting"], r["batch"], r["method"]) == (row["setting"], row["batch"], "vanilla")
        )
        for r in rows:
            same = (r["setting"], r["batch"]) == (row["setting"], row["batch"])
            if same and r["seconds"] is not None and base["seconds"] is not None:
                r["ratio"] = r["seconds"] / base["seconds"]
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()


# ------------------------------------------------------------------------------------------ packing


def _pack_worker(rank: int, device: str, batch: int, tasks, results) -> None:
    from letkd.models import create_model

    dev = torch.device(device)
    torch.set_num_threads(1)
    teacher = create_model("resnet56", 100).eval().requires_grad_(False)
    steps = {label: build_step(label, batch, "bf16", dev, teacher) for label in ("vanilla", "letkd1")}
    for step in steps.values():
        for _ in range(2):
            step()
    sync(dev)
    results.put(("ready", rank, 0.0))
    while (task := tasks.get()) is not None:
        label, start_at, window = task
        while time.time() < start_at:
            time.sleep(0.001)
        t0, count = time.perf_counter(), 0
        while True:
            steps[label]()
            count += 1
            if count % 4 == 0:
                sync(dev)
                if time.perf_counter() - t0 >= window:
                    break
        sync(dev)
        results.put((label, rank, count * batch / (time.perf_counter() - t0)))


def measure_packing(device, batch: int, levels: list[int], window: float, clock: Clock) -> list[dict]:
    """Images/s per run with N copies of the same step loop side by side (one process each)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    workers, queues = [], []
    for rank in range(max(levels)):
        q = ctx.Queue()
        p = ctx.Process(target=_pack_worker, args=(rank, str(device), batch, q, results), daemon=True)
        p.start()
        workers.append(p)
        queues.append(q)
    rows: list[dict] = []
    try:
        ready = 0
        while ready < len(workers) and clock.left() > 0:
            try:
                ready += results.get(timeout=min(max(clock.left(), 0.1), 600))[0] == "ready"
            except queue.Empty:
                break
        for label in ("vanilla", "letkd1"):
            for n in levels:
                if ready < len(workers) or clock.left() < window + 3:
                    rows.append({"method": label, "runs": n, "per_run": None, "total": None})
                    continue
                start_at = time.time() + 0.5
                for q in queues[:n]:
                    q.put((label, start_at, window))
                rates = [results.get(timeout=window + 60)[2] for _ in range(n)]
                rows.append(
                    {"method": label, "runs": n, "per_run": statistics.mean(rates), "total": sum(rates)}
                )
    finally:
        for q in queues:
            q.put(None)
        for p in workers:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return rows


# -------------------------------------------------------------------------------------------- epoch


def measure_epoch(device, batches, images: int, clock: Clock, out: Path) -> list[dict]:
    """Seconds of one ``Trainer.train_epoch`` of vanilla resnet20 on GPU-resident synthetic images."""
    from letkd.config import RunConfig
    from letkd.data.memory import InMemoryImageDataset
    from letkd.data.registry import get_transform
    from letkd.engine import DistInfo, Trainer, build_test_loader, build_train_loader
    from letkd.methods import MethodContext, get_method
    from letkd.models import create_model

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (images,), generator=g).tolist()
    train = InMemoryImageDataset(pixels, labels, get_transform("cifar100", "train"))
    test = InMemoryImageDataset(pixels[:256], labels[:256], get_transform("cifar100", "test"))
    rows = []
    for batch in batches:
        if clock.left() < 10:
            rows.append({"batch": batch, "seconds": None, "images": images})
            continue
        settings = {"amp": "bf16", "channels_last": True, "progress": False, "tensorboard": False}
        cfg = RunConfig.model_validate(
            {
                "data": {"name": "cifar100", "batch_size": batch, "on_device": True},
                "model": {"name": "resnet20", "num_classes": 100},
                "train": settings | {"max_steps_per_epoch": 2 if device.type == "cpu" else 20},
            }
        )
        student = create_model("resnet20", 100)
        distiller = get_method("vanilla").from_config(student, None, {}, MethodContext(100))
        loaders = (
            build_train_loader(train, cfg, DistInfo(), device),
            build_test_loader(test, cfg, DistInfo(), device),
        )
        trainer = Trainer(distiller, cfg, out / f"epoch_b{batch}", *loaders, device)
        trainer.train_epoch(0)  # warm-up: 20 steps on the GPU (cuDNN autotuning, allocator)
        trainer.cfg.train.max_steps_per_epoch = None
        sync(torch.device(device))
        stats, seconds = trainer.train_epoch(1)
        rows.append({"batch": batch, "seconds": seconds, "images": stats["train_images"]})
    return rows


# ------------------------------------------------------------------------------------------ output


def _fmt(value, spec: str) -> str:
    return "not measured" if value is None else format(value, spec)


def to_markdown(result: dict) -> str:
    steps = result["steps"]
    lines = [
        f"device: {result['device']}, torch {result['torch']}"
        + (" (DRY RUN: CPU, tiny sizes; not a measurement)" if result["dry_run"] else ""),
        "",
        "Training step (resnet56 → resnet20, channels-last):",
        "",
    ]
    rows = []
    for r in steps:
        target = TARGETS.get(r["method"]) if r["batch"] == result["batches"][0] else None
        verdict = (
            ""
            if target is None or r["ratio"] is None or result["dry_run"]
            else f"≤ {target}× " + ("ok" if r["ratio"] <= target else "MISSED")
        )
        rows.append(
            [
                r["setting"],
                r["batch"],
                r["method"],
                _fmt(r["seconds"] and r["seconds"] * 1e3, ".2f"),
                _fmt(r["images_per_s"], ".0f"),
                _fmt(r["ratio"], ".2f"),
                verdict,
            ]
        )
    lines.append(format_table(["setting", "batch", "method", "ms/step", "images/s", "ratio", "target"], rows))
    lines += ["", f"Packing (batch {result['batches'][0]}, bf16, one process per run):", ""]
    rows = [
        [r["method"], r["runs"], _fmt(r["per_run"], ".0f"), _fmt(r["total"], ".0f")]
        for r in result["packing"]
    ]
    lines.append(format_table(["method", "runs", "images/s per run", "images/s total"], rows))
    lines += [
        "",
        "Vanilla resnet20 epoch, data on the device (bf16, channels-last, engine's train_epoch):",
        "",
    ]
    rows = [
        [
            r["batch"],
            r["images"],
            _fmt(r["seconds"], ".2f"),
            ""
            if r["seconds"] is None or result["dry_run"]
            else f"≤ {EPOCH_TARGET_S} s "
            + ("ok" if r["seconds"] * 50_000 / r["images"] <= EPOCH_TARGET_S else "MISSED"),
        ]
        for r in result["epoch"]
    ]
    lines.append(format_table(["batch", "images", "seconds", "target (50,000 images)"], rows))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=100.0, help="seconds for the whole stage")
    parser.add_argument("--out", default="runs/gpu/speed", help="output folder")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the code path")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dry = args.dry_run or not torch.cuda.is_available()
    clock = Clock(float("inf") if dry else args.budget_s)  # a dry run checks every code path, untimed
    device = torch.device("cpu" if dry else "cuda")
    if not dry:
        torch.backends.cudnn.benchmark = True
    batches = [2] if dry else [64, 128]
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if not dry else "cpu",
        "torch": torch.__version__,
        "dry_run": dry,
        "batches": batches,
        "steps": plan_steps(batches, ("bf16", "fp32")),
        "packing": [],
        "epoch": [],
    }
    if not dry:  # compiling the teacher on the CPU takes minutes: not in the dry run
        result["steps"] += [r for r in plan_steps(batches[:1], ("bf16+tc",)) if r["method"] != "vanilla"]

    def save() -> None:
        atomic_write_text(out / "speed.json", json.dumps(result, indent=1))
        atomic_write_text(out / "speed.md", to_markdown(result))

    # order: eager/bf16 steps (45 % of the budget), the epoch, packing, then the compiled teacher
    steps, warmup = (1, 1) if dry else (20, 5)
    plain = [r for r in result["steps"] if r["setting"] != "bf16+tc"]
    measure_steps(plain, device, Clock(clock.left() * 0.45), steps, warmup, save)
    result["epoch"] = measure_epoch(device, batches, 32 if dry else 50_000, Clock(clock.left() * 0.35), out)
    save()
    levels = [1, 2] if dry else [1, 2, 4, 8, 16]
    result["packing"] = measure_packing(
        device, batches[0], levels, 0.2 if dry else 3.0, Clock(clock.left() * 0.6)
    )
    save()
    compiled = [r for r in result["steps"] if r["setting"] == "bf16+tc"]
    if compiled:
        vanilla = next(
            r for r in plain if (r["setting"], r["batch"], r["method"]) == ("bf16", batches[0], "vanilla")
        )
        measure_steps(compiled, device, Clock(clock.left() - 3), steps, warmup, save)
        for r in compiled:  # ratio to the eager-teacher vanilla (vanilla has no teacher to compile)
            ok = r["seconds"] is not None and vanilla["seconds"] is not None
            r["ratio"] = r["seconds"] / vanilla["seconds"] if ok else None
    save()
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
