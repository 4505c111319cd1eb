"""Supervision fitting at full scale on real Fashion-MNIST (60,000 training images, resnet20 at layer3).

Measures, in one run:
- extraction: images/s and peak RSS against the size of the row matrix (3.84 M rows × 64, float32);
- K-means subsample check at a moderate size (K = 256, N/(K·256) as at full scale): objective on all rows
  with faiss's default subsample vs with all rows;
- the K = 4096 codebook fit with the default (and, with ``LETKD_BENCH_FULL=1``, on all rows);
- the sub-class pipeline (LDA, per-class K-means, prototypes, nearest-prototype scores) with the 10
  Fashion-MNIST classes and with 100 classes (each image's label split by image index, as CIFAR-100
  would be: 800 sub-classes, 60 LDA components).

Targets: extraction peak RSS ≤ 2× the row matrix; sub-class pipeline ≤ 40 s at 3.2 M × 64 with 800
sub-classes. ``LETKD_BENCH_TEACHER=path`` uses a trained resnet20 checkpoint instead of random weights;
``LETKD_BENCH_DIR`` is where the rows go (default: a temporary folder, removed at the end; rows already
there are reused, skipping the extraction measurement). Times are wall-clock, with the process CPU time
beside them: on a shared machine the CPU time is the steadier number.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from letkd.data import create_dataset
from letkd.models import create_model, load_weights
from letkd.supervision.codebook import DEFAULT_MAX_POINTS_PER_CENTROID, fit_codebook
from letkd.supervision.extract import RowFile, extract_rows
from letkd.supervision.kmeans import nearest_center, train_kmeans
from letkd.supervision.subclass import fit_subclasses
from letkd.utils import seed_everything

MB = 1 << 20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    """Wall-clock and process CPU seconds of a ``with`` block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.1f} s (CPU {self.cpu:.1f} s)"


def teacher() -> tuple[torch.nn.Module, str]:
    """resnet20 with 10 classes: trained weights from ``$LETKD_BENCH_TEACHER`` or random ones."""
    seed_everything(0)
    model = create_model("resnet20", num_classes=10)
    path = os.environ.get("LETKD_BENCH_TEACHER")
    if path:
        load_weights(model, path)
        return model.eval(), f"trained checkpoint {path}"
    return model.eval(), "UNTRAINED resnet20 (random weights; set LETKD_BENCH_TEACHER=path for a trained one)"


def subsample_check(rows: np.ndarray, k: int = 256, seed: int = 0) -> None:
    """K-means objective on all rows: faiss's default subsample (K·256 rows) vs all rows, same seed."""
    n = int(round(k * 256 * len(rows) / (4096 * 256)))  # same N / (K·256) ratio as the full-size fit
    rng = np.random.default_rng(seed)
    x = np.array(rows[np.sort(rng.choice(len(rows), size=n, replace=False))])
    print(f"\nK-means subsample check: N = {n:,} rows, K = {k} (N / (K·256) = {n / (k * 256):.2f})")
    for mpc, label in ((256, "faiss default (K·256 rows)"), (None, "all rows")):
        for s in (0, 1):
            with Timer() as timer:
                centers = train_kmeans(x, k, iters=20, seed=s, max_points_per_centroid=mpc)
            objective = float(nearest_center(x, centers)[1].astype(np.float64).mean())
            print(f"  {label:28s} seed {s}: objective on all rows {objective:.4f}, {timer}")


def subclass_run(rows: np.ndarray, labels: np.ndarray, num_classes: int, title: str) -> float:
    """Fit the sub-class pipeline and print its steps; return the total seconds."""
    with Timer() as timer:
        module = fit_subclasses(
            rows, labels, num_classes, subclasses_per_class=8, lda_components=60, iters=20
        )
    total = timer.wall
    steps = ", ".join(f"{name} {sec:.1f} s" for name, sec in module.fit_info["seconds"].items())
    print(
        f"  {title}: {len(rows):,} rows × {rows.shape[1]}, {module.num_subclasses} sub-classes, "
        f"LDA {module.centers.shape[1]} comps: total {timer} ({steps}); peak RSS {peak_rss_mb():.0f} MB"
    )
    return total


def main() -> None:
    """Run every measurement and print the numbers and ratios."""
    torch.set_num_threads(os.cpu_count() or 1)
    model, teacher_text = teacher()
    print(
        f"teacher: {teacher_text}; tap layer3; torch threads {torch.get_num_threads()}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    dataset = create_dataset("fashion_mnist", "train", transform="test")
    own_dir = "LETKD_BENCH_DIR" not in os.environ
    root = Path(os.environ.get("LETKD_BENCH_DIR") or tempfile.mkdtemp(prefix="letkd-bench-"))
    try:
        try:
            rows = RowFile.open(root / "rows")
            print(f"\nreusing the rows in {root / 'rows'} (no extraction measurement)")
        except FileNotFoundError:
            rss_before = peak_rss_mb()
            with Timer() as timer:
                rows = extract_rows(model, dataset, "layer3", root / "rows", batch_size=256, progress=False)
            matrix_mb = rows.num_rows * rows.dim * 4 / MB
            rss = peak_rss_mb()
            print(
                f"\nextraction: {len(dataset):,} images → {rows.num_rows:,} rows × {rows.dim} "
                f"({matrix_mb:.0f} MB) in {timer} = {len(dataset) / timer.wall:.0f} images/s"
            )
            print(
                f"  peak RSS {rss:.0f} MB (before extraction {rss_before:.0f} MB) = "
                f"{rss / matrix_mb:.2f}× the row matrix (target ≤ 2×)"
            )

        subsample_check(rows.rows)

        print(f"\ncodebook K=4096 on {rows.num_rows:,} rows:")
        settings = [(DEFAULT_MAX_POINTS_PER_CENTROID, "default")]
        if os.environ.get("LETKD_BENCH_FULL") == "1":
            settings.append((None, "all rows"))
        for mpc, label in settings:
            with Timer() as timer:
                codebook = fit_codebook(
                    rows.rows, 4096, iters=20, seed=0, max_points_per_centroid=mpc, progress=False
                )
            info = codebook.fit_info
            sizes = info["cluster_sizes"]
            print(
                f"  {label} (max_points_per_centroid={mpc}): {timer} "
                f"(K-means {info['seconds_kmeans']:.1f} s, "
                f"assigning all rows {info['seconds_assign']:.1f} s), "
                f"objective {info['kmeans_objective']:.4f}, sizes min/median/max "
                f"{sizes['min']}/{sizes['median']:.0f}/{sizes['max']} ({sizes['empty']} empty); "
                f"peak RSS {peak_rss_mb():.0f} MB"
            )

        print("\nsub-class pipeline (k = 8 per class, 20 K-means iterations):")
        labels = np.array(rows.labels)
        subclass_run(rows.rows, labels, 10, "10 classes")
        h, w = rows.grid
        image_index = np.arange(rows.num_rows) // (h * w)
        total = subclass_run(rows.rows, labels * 10 + image_index % 10, 100, "100 classes")
        print(
            f"  100-class pipeline: {total:.1f} s for {rows.num_rows / 1e6:.2f} M rows "
            f"(target ≤ 40 s at 3.2 M rows; ratio to target {total / 40 * 3.2e6 / rows.num_rows:.2f})"
        )
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
