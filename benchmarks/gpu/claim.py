"""The method's claim at a real budget: vanilla, KD, QuEST, letKD-1, letKD-2 on the full Fashion-MNIST.

On all 60,000 training images (10,000 test images), with the data held on the GPU (``data.on_device``):

1. a resnet56 teacher is trained (``letkd train`` of ``configs/cifar100/teachers/resnet56.yaml`` with
   Fashion-MNIST overrides);
2. its supervision is fitted on every row (``letkd fit``, ``supervision.max_rows`` ≥ N);
3. resnet20 students are trained side by side, one process each (``letkd run`` of
   ``configs/cifar100/resnet56_resnet20/<method>.yaml`` with overrides): vanilla, kd, quest, letkd1, letkd2,
   and letkd1 / letkd2 with the template-KL weight 0.1 — same epochs and seeds for all;
4. ``letkd report`` over the run folders writes the report into ``<out>/report``.

The recipe is the paper's scaled to the time: SGD Nesterov 0.9, weight decay 5e-4, LR 0.05, batch 64, with
a cosine LR updated every step instead of the 240-epoch step schedule; AMP bf16 and channels-last. Epochs
are chosen from the budget (measured teacher epoch time); every stage has a hard deadline, after which the
runs are interrupted (they save ``last.pt`` and are reported as unfinished). All configs and overrides are
written into ``<out>/configs``; logs into ``<out>/logs``; the claim table into ``<out>/claim.md``.
``--dry-run``: CPU, 256 training / 100 test images, 2 steps per run, 3 of the students — a check of the code
paths.
Run: ``python -m benchmarks.gpu.claim --budget-s 200 --out runs/gpu/claim``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from letkd.utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
PAIR, TEACHER_CONFIG = "configs/cifar100/resnet56_resnet20", "configs/cifar100/teachers/resnet56.yaml"
STUDENTS = ["vanilla", "kd", "quest", "letkd1", "letkd2", "letkd1_w0.1", "letkd2_w0.1"]
RECIPE = [
    "train.lr=0.05",
    "train.schedule.type=cosine",
    "train.schedule.per_step=true",
    "train.amp=bf16",
    "train.channels_last=true",
    "train.progress=false",
    "data.batch_size=64",
    "data.num_workers=0",
]


def layers(method: str, templates: int, weight: float) -> list[dict]:
    """KD-layer params for Fashion-MNIST: 10 classes give at most 9 LDA components; K templates."""
    codebook = {
        "kind": "codebook",
        "student_tap": "penultimate",
        "teacher_tap": "penultimate",
        "num_templates": templates,
        "temperature": 5.0 if method == "quest" else 1.0,
    }
    if method == "quest":
        return [codebook]
    codebook |= {"alpha": 1.0, "weight": weight}
    subclass = {
        "kind": "subclass",
        "student_tap": "intermediate",
        "teacher_tap": "intermediate",
        "alpha": 1.0,
        "weight": weight,
        "subclasses_per_class": 8,
        "lda_components": 9,
    }
    return [subclass, codebook] if method == "letkd2" else [codebook]


def student_overrides(
    label: str, data: list[str], teacher_ckpt: Path, epochs: int, seed: int, templates: int, cache: Path
) -> tuple[str, list[str]]:
    """(config file, overrides) of one student run."""
    method, _, weight = label.partition("_w")
    extra = (
        []
        if method == "vanilla"
        else [
            f"teacher.checkpoint={teacher_ckpt}",
            "teacher.train_config=null",
            "teacher.compile=false",
            f"supervision.cache_dir={cache}",
            "supervision.max_rows=100000000",
        ]
    )
    if method in ("quest", "letkd1", "letkd2"):
        params = layers(method, templates, float(weight or 1.0))
        extra.append("method.params.layers=" + json.dumps(params))
    return f"{PAIR}/{method}.yaml", [
        *RECIPE,
        *data,
        *extra,
        f"train.epochs={epochs}",
        f"seed={seed}",
        f"name=fmnist-{label}-s{seed}",
    ]


def letkd(args: list[str], log: Path, env: dict, timeout: float) -> int:
    """``python -m letkd ARGS``, output in ``log``; interrupted (SIGINT, then killed) at the timeout."""
    with open(log, "w") as fh:
        fh.write("$ letkd " + " ".join(args) + "\n")
        fh.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "letkd", *args],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return wait(proc, time.monotonic() + max(timeout, 1))


def wait(proc: subprocess.Popen, deadline: float) -> int:
    """Wait for ``proc`` until ``deadline``; then SIGINT (last.pt keeps the last completed epoch), and kill
    20 s later."""
    try:
        return proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()


def record(out: Path, label: str, config: str, overrides: list[str]) -> None:
    """Write the config and its overrides into ``out/configs`` (what each run was started with)."""
    folder = out / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    text = f"# letkd run {config} with the overrides below\n" + yaml.safe_dump({"overrides": overrides})
    atomic_write_text(folder / f"{label}.yaml", text)


def claim_table(run_dirs: dict[str, Path]) -> str:
    """A Markdown table of best/last top-1 and status per run (from summary.json or metrics.jsonl)."""
    lines = ["| run | status | epochs | best top-1 | last top-1 | s/epoch |", "|---|---|---:|---:|---:|---:|"]
    for label, folder in run_dirs.items():
        summary_path, rows = folder / "summary.json", []
        if (folder / "metrics.jsonl").is_file():
            rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        tops = [r["test_top1"] for r in rows if r.get("test_top1") is not None]
        status = summary.get("status", "not finished" if rows else "no epoch")
        best = f"{max(tops):.2f}" if tops else "—"
        last = f"{tops[-1]:.2f}" if tops else "—"
        secs = f"{sum(r['seconds'] for r in rows) / len(rows):.1f}" if rows else "—"
        lines.append(f"| {label} | {status} | {len(rows)} | {best} | {last} | {secs} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=200.0, help="seconds for the whole stage")
    parser.add_argument("--out", default="runs/gpu/claim", help="output folder")
    parser.add_argument("--data", default=None, help="folder with fashion-mnist/*-ubyte.gz (default: search)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..n-1 per method")
    parser.add_argument(
        "--templates", type=int, default=256, help="K of the penultimate codebook (dry run: 16)"
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny subsets, one epoch")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.templates = 16
    start, out = time.monotonic(), Path(args.out).resolve()
    deadline = start + args.budget_s
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    if args.data:
        env["LETKD_DATA"] = str(Path(args.data).resolve())
    data = ["data.name=fashion_mnist", "data.on_device=true", "data.test_batch_size=1000", "data.root=null"]
    device = ["--device", "cpu"] if args.dry_run else ["--device", "cuda"]
    if args.dry_run:
        data += [
            "data.train_subset=256",
            "data.test_subset=100",
            "train.max_steps_per_epoch=2",
            "train.amp=off",
            "data.batch_size=16",
        ]
    # 1. teacher: a short calibration run gives the epoch time, from which the epochs follow
    calib_dir, teacher_dir = out / "calibration", out / "teacher"
    shutil.rmtree(calib_dir, ignore_errors=True)
    shutil.rmtree(teacher_dir, ignore_errors=True)
    teacher_args = [*RECIPE, *data, "name=fmnist-teacher-resnet56", "train.tensorboard=false"]
    steps = 2 if args.dry_run else 150
    calib = [*teacher_args, "train.epochs=1", f"train.max_steps_per_epoch={steps}"]
    record(out, "teacher_calibration", TEACHER_CONFIG, calib)
    rc = letkd(
        ["train", TEACHER_CONFIG, *calib, "--out", str(calib_dir), *device],
        out / "logs" / "calibration.log",
        env,
        deadline - time.monotonic(),
    )
    if rc != 0:
        print(
            f"claim: the teacher calibration run failed (exit {rc}); see {out / 'logs' / 'calibration.log'}"
        )
        return 1
    first = json.loads((calib_dir / "metrics.jsonl").read_text().splitlines()[0])
    train_images = 256 if args.dry_run else 60_000
    epoch_s = train_images / first["images_per_second"] + (
        first["seconds"] - first["train_images"] / first["images_per_second"]
    )  # + evaluation
    left = deadline - time.monotonic()
    # the teacher takes ~30 % of what is left; students (all side by side) are assumed 3x a teacher epoch
    teacher_epochs = 1 if args.dry_run else max(1, min(30, int(0.3 * left / epoch_s)))
    student_epochs = 1 if args.dry_run else max(1, min(30, int(0.45 * left / (3 * epoch_s))))
    full = [*teacher_args, f"train.epochs={teacher_epochs}"]
    record(out, "teacher", TEACHER_CONFIG, full)
    letkd(
        ["train", TEACHER_CONFIG, *full, "--out", str(teacher_dir), *device],
        out / "logs" / "teacher.log",
        env,
        0.35 * left,
    )
    teacher_ckpt = teacher_dir / "last.pt"
    # 2. supervision on every row, fitted once (quest's codebook has its own temperature, so its own fit)
    cache = out / "artifacts"
    fits = {}
    for label in ("letkd2", "quest"):
        config, overrides = student_overrides(label, data, teacher_ckpt, 1, 0, args.templates, cache)
        fits[label] = letkd(
            ["fit", config, *overrides, "--no-progress", *device],
            out / "logs" / f"fit_{label}.log",
            env,
            0.25 * (deadline - time.monotonic()),
        )
    # 3. students side by side
    runs, procs = {}, []
    # a dry run checks each code path once: no teacher, QuEST, letKD-2 with the template-KL weight
    students = ["vanilla", "quest", "letkd2_w0.1"] if args.dry_run else STUDENTS
    for seed in range(args.seeds):
        for label in students:
            config, overrides = student_overrides(
                label, data, teacher_ckpt, student_epochs, seed, args.templates, cache
            )
            name = f"{label}-s{seed}"
            record(out, name, config, overrides)
            runs[name] = out / "runs" / name
            shutil.rmtree(runs[name], ignore_errors=True)
            log = open(out / "logs" / f"{name}.log", "w")  # noqa: SIM115 (closed below)
            cmd = [
                sys.executable,
                "-m",
                "letkd",
                "run",
                config,
                *overrides,
                "--out",
                str(runs[name]),
                *device,
            ]
            log.write("$ " + " ".join(cmd[2:]) + "\n")
            log.flush()
            procs.append(
                (
                    name,
                    log,
                    subprocess.Popen(
                        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    ),
                )
            )
    codes = {}
    for name, log, proc in procs:
        codes[name] = wait(proc, deadline - 8)
        log.close()
    # 4. report
    rc = letkd(
        ["report", str(out / "runs"), "--out", str(out / "report"), "--include-unfinished"],
        out / "logs" / "report.log",
        env,
        60,
    )
    header = (
        f"Fashion-MNIST claim: resnet56 teacher ({teacher_epochs} epochs, ~{epoch_s:.1f} s each estimated),"
        f" resnet20 students {student_epochs} epochs, seeds {args.seeds}, K = {args.templates}"
        + (" — DRY RUN (CPU, tiny subsets)" if args.dry_run else "")
    )
    teacher_top1 = json.loads((teacher_dir / "summary.json").read_text()).get("best_top1")
    notes = [
        f"teacher best top-1: {teacher_top1 if teacher_top1 is None else round(teacher_top1, 2)}",
        f"supervision fits (exit codes): {fits}",
        f"student exit codes: {codes}",
        f"letkd report exit code: {rc} (report in {out / 'report'})",
    ]
    text = header + "\n\n" + claim_table(runs) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_text(out / "claim.md", text)
    print(text)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
