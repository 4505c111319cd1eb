"""Accuracy of vanilla, KD, QuEST, letKD-1 and letKD-2 on real Fashion-MNIST under a fixed CPU budget.

Built on the pipeline: a ``wrn_16_2`` teacher (wide and shallow, so it converges in few epochs) is trained
once from a generated config (kept under ``runs/teachers/`` and reused by later runs), its supervision is
fitted once and cached, then a ``resnet8`` student is trained by every method for every seed with
:func:`letkd.pipeline.run_pipeline`. :func:`letkd.report.write_report` groups the runs over seeds (mean ±
std of best and last top-1) into ``<out>/report/`` and the Markdown table is printed.

Scaled-down protocol: a seeded random training subset, a cosine LR schedule updated every step over a few
epochs, K = 256 templates (τ = 1 for letKD, 5 for QuEST), 4 sub-classes per class and 9 LDA dimensions (LDA
gives at most classes − 1 = 9). The subset is written once as its own Fashion-MNIST folder (IDX files; the
test split is the full official one) and used as ``data.root``: the teacher, its supervision (fitted on the
teacher's features of these training images, as the paper fits on its training set) and every student then see
the same images, and no time goes into extracting features of the other training images. Runs already
completed under the same budget are reused, so an interrupted benchmark picks up where it stopped.

Settings (environment): ``LETKD_BENCH_SEEDS`` (default 3), ``LETKD_BENCH_EPOCHS`` (student epochs, 5),
``LETKD_BENCH_SUBSET`` (training images, 4000), ``LETKD_BENCH_METHODS`` (comma-separated labels of
:data:`METHOD_SECTIONS`, default the five above), ``LETKD_BENCH_TEACHER_EPOCHS`` (default 2 × student epochs),
``LETKD_BENCH_TEST_SUBSET`` (first N test images, default 5000; 0 = all 10,000), ``LETKD_BENCH_STUDENT``
(default ``resnet8``; e.g. ``vit_pico_p4``: a CNN teacher distilled into a ViT), ``LETKD_BENCH_OUT``
(default ``runs/bench_accuracy``). See docs/benchmarks.md for the time this takes.
Run: ``python -m benchmarks.run_all accuracy_fmnist``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks._common import env_int, env_list
from letkd.config import config_from_dict
from letkd.data import fashion_mnist
from letkd.pipeline import run_pipeline
from letkd.report import write_report
from letkd.utils import atomic_write_bytes, atomic_write_text

DATASET, TEACHER, STUDENT = "fashion_mnist", "wrn_16_2", "resnet8"
NUM_TEMPLATES, SUBCLASSES_PER_CLASS, LDA_COMPONENTS = 256, 4, 9
METHODS = ("vanilla", "kd", "quest", "letkd1", "letkd2")

_CODEBOOK = {"kind": "codebook", "student_tap": "penultimate", "teacher_tap": "penultimate"}
_SUBCLASS = {
    "kind": "subclass",
    "student_tap": "intermediate",
    "teacher_tap": "intermediate",
    "alpha": 1.0,
    "subclasses_per_class": SUBCLASSES_PER_CLASS,
    "lda_components": LDA_COMPONENTS,
}
_LETKD_CODEBOOK = {**_CODEBOOK, "alpha": 1.0, "num_templates": NUM_TEMPLATES, "temperature": 1.0}
#: benchmark label → method section of the config
METHOD_SECTIONS: dict[str, dict[str, Any]] = {
    "vanilla": {"name": "vanilla"},
    "kd": {"name": "kd", "params": {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}},
    "quest": {
        "name": "quest",
        "params": {"layers": [{**_CODEBOOK, "num_templates": NUM_TEMPLATES, "temperature": 5.0}]},
    },
    "letkd1": {"name": "letkd", "params": {"layers": [_LETKD_CODEBOOK]}},
    "letkd2": {"name": "letkd", "params": {"layers": [_SUBCLASS, _LETKD_CODEBOOK]}},
    # the usual zoo with its RepDistiller / SimKD defaults, scaled to the short run where needed (FSP does
    # not apply: wrn_16_2 and resnet8 differ in stage widths)
    "vid": {"name": "vid"},
    "ab": {
        "name": "ab",
        "params": {
            "init_epochs": 1,
            "teacher_taps": ["block2.layer.0.relu1", "block3.layer.0.relu1", "relu"],
        },
    },
    "nst": {"name": "nst"},
    "pkt": {"name": "pkt"},
    "rkd": {"name": "rkd"},
    "crd": {"name": "crd", "params": {"nce_k": 4096}},
    "crd_kd": {"name": "crd_kd", "params": {"nce_k": 4096}},
    "simkd": {"name": "simkd"},
}


def budget() -> dict[str, Any]:
    """The run budget read from the environment (see the module docstring for names and defaults)."""
    epochs = env_int("LETKD_BENCH_EPOCHS", 5)
    test_subset = env_int("LETKD_BENCH_TEST_SUBSET", 5000)
    return {
        "seeds": env_int("LETKD_BENCH_SEEDS", 3),
        "epochs": epochs,
        "subset": env_int("LETKD_BENCH_SUBSET", 4000),
        "teacher_epochs": env_int("LETKD_BENCH_TEACHER_EPOCHS", 2 * epochs),
        "test_subset": test_subset or None,
        "student": os.environ.get("LETKD_BENCH_STUDENT") or STUDENT,
    }


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an unsigned-byte array as an (uncompressed) IDX file, atomically."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    atomic_write_bytes(path, header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_training_subset(root: Path, size: int, seed: int = 0) -> Path:
    """A data root whose Fashion-MNIST training split is a seeded random subset of ``size`` images (in their
    original order) and whose test split is the official one; returns ``root`` (written once)."""
    folder = root / "fashion-mnist"
    names = {"train": fashion_mnist.FILES["train"], "test": fashion_mnist.FILES["test"]}
    if all((folder / n).is_file() for pair in names.values() for n in pair):
        return root
    source = fashion_mnist.find_folder()

    def read(name: str) -> np.ndarray:
        plain = source / name
        return fashion_mnist.read_idx(plain if plain.is_file() else source / f"{name}.gz")

    images, labels = (read(n) for n in names["train"])
    keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:size])
    write_idx(folder / names["train"][0], images[keep])
    write_idx(folder / names["train"][1], labels[keep])
    for name in names["test"]:
        write_idx(folder / name, read(name))
    return root


def base_config(
    name: str, model: str, seed: int, epochs: int, data_root: Path, b: dict[str, int | None]
) -> dict[str, Any]:
    """Data, model and training sections shared by the teacher and student configs."""
    return {
        "name": name,
        "seed": seed,
        "data": {
            "name": DATASET,
            "root": str(data_root),
            "batch_size": 64,
            "test_batch_size": 250,
            "test_subset": b["test_subset"],
        },
        "model": {"name": model},
        "method": {"name": "vanilla"},
        "train": {
            "epochs": epochs,
            "lr": 0.05,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
            "schedule": {"type": "cosine", "per_step": True},
            "progress": False,
            "tensorboard": False,
        },
    }


def write_teacher_config(folder: Path, data_root: Path, b: dict[str, int | None]) -> Path:
    """Write the teacher's training config (vanilla ``wrn_16_2``, seed 0) and return its absolute path."""
    data = base_config(f"fmnist-bench-teacher-{TEACHER}", TEACHER, 0, int(b["teacher_epochs"]), data_root, b)
    return atomic_write_text(folder / "teacher.yaml", yaml.safe_dump(data, sort_keys=False)).resolve()


def student_config(
    label: str, seed: int, teacher_config: Path, data_root: Path, cache_dir: Path, b: dict[str, Any]
) -> dict[str, Any]:
    """The config of one student run: ``label`` in :data:`METHOD_SECTIONS`, trained with ``seed``."""
    data = base_config(f"fmnist-bench-{label}-seed{seed}", b["student"], seed, int(b["epochs"]), data_root, b)
    data["method"] = METHOD_SECTIONS[label]
    if label != "vanilla":
        data["teacher"] = {
            "name": TEACHER,
            "checkpoint": None,
            "train_config": str(teacher_config),
            # the teacher's test accuracy (a sanity check and the report's teacher column) is the same for
            # every seed: measure it once
            "check_accuracy": seed == 0,
        }
        data["supervision"] = {"cache_dir": str(cache_dir)}
    return data


def completed(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run."""
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"


def teacher_accuracy(teacher_config: Path) -> str:
    """The teacher's best/last test top-1 from its run folder's summary (as text)."""
    from letkd.config import load_config
    from letkd.pipeline import teacher_run_dir

    summary = teacher_run_dir(load_config(teacher_config)) / "summary.json"
    if not summary.is_file():
        return "unknown"
    s = json.loads(summary.read_text())
    return f"best {s.get('best_top1', float('nan')):.2f}%, last {s.get('last_top1', float('nan')):.2f}%"


def main() -> None:
    """Run every (method, seed) not yet done under this budget, write the report and print its table."""
    b = budget()
    out = Path(os.environ.get("LETKD_BENCH_OUT", "runs/bench_accuracy"))
    student = "" if b["student"] == STUDENT else f"-{b['student']}"
    tag = f"e{b['epochs']}-n{b['subset']}-t{b['teacher_epochs']}{student}" + (
        f"-test{b['test_subset']}" if b["test_subset"] else ""
    )
    runs_root = out / "runs" / tag
    data_root = write_training_subset(out / "data" / f"fashion_mnist-train{b['subset']}", int(b["subset"]))
    data_root = data_root.resolve()
    teacher_config = write_teacher_config(out / "configs" / tag, data_root, b)
    print(
        f"Fashion-MNIST: teacher {TEACHER} ({b['teacher_epochs']} epochs) → student {b['student']}, "
        f"{b['subset']} training images, {b['epochs']} epochs, seeds 0..{b['seeds'] - 1}, "
        f"K={NUM_TEMPLATES}, {SUBCLASSES_PER_CLASS} sub-classes/class, {LDA_COMPONENTS} LDA dims",
        flush=True,
    )
    methods = env_list("LETKD_BENCH_METHODS", list(METHODS))
    unknown = [label for label in methods if label not in METHOD_SECTIONS]
    if unknown:
        known = ", ".join(METHOD_SECTIONS)
        raise ValueError(f"LETKD_BENCH_METHODS: unknown label(s) {unknown}; known: {known}")
    start = time.perf_counter()
    for seed in range(b["seeds"]):
        for label in methods:
            run_dir = runs_root / f"{label}-seed{seed}"
            if completed(run_dir):
                print(f"  {label:8s} seed {seed}: done earlier ({run_dir})", flush=True)
                continue
            data = student_config(label, seed, teacher_config, data_root, (out / "artifacts").resolve(), b)
            cfg = config_from_dict(data, label)
            t0 = time.perf_counter()
            summary = run_pipeline(cfg, run_dir=run_dir)
            print(
                f"  {label:8s} seed {seed}: best {summary.get('best_top1', float('nan')):.2f}%  "
                f"last {summary.get('last_top1', float('nan')):.2f}%  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    print(f"teacher {TEACHER} test top-1: {teacher_accuracy(teacher_config)}")
    paths = write_report([runs_root], out / "report")
    print(f"\n{paths['markdown'].read_text()}")
    print(f"report: {paths['markdown']}  (total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
