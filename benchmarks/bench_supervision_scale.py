"""Supervision at ImageNet scale, simulated: a synthetic feature stream through the real fitting code.

``python -m benchmarks.bench_supervision_scale --rows N --dim D --classes C --out DIR`` feeds
``N`` class-structured Gaussian rows (``N / 49`` "images" of 7×7 locations, classes in dataset order
as in ImageNet's folders, 8 sub-clusters per class) through the same code as ``letkd fit``: one
streaming teacher pass (:func:`letkd.supervision.stream.collect_rows`, with a stand-in teacher that
makes the maps) filling the row folders of a letKD-2 pair of fits on one tap (class statistics + a
per-class sample for the sub-classes, a seeded sample for the codebook, both as ``supervision.*``
caps say, with the disk/memory check before the pass), then the sub-class fit (LDA from the
statistics, per-class K-means, score matrix) and the codebook fit (K-means + cluster sizes).

The last line printed is one JSON object: ``rows``, ``dim``, ``classes``, ``seconds`` (wall, all of it),
``stream_seconds``, ``subclass_seconds``, ``codebook_seconds`` (and ``*_cpu_seconds``: process CPU
time, the steadier figure on a shared machine), ``peak_rss_gb`` (this process; also after each stage),
``disk_gb`` (the row folders left in ``--out``), ``full_rows_gb`` (every row as float32: what storing
them all would take), the estimate of the pre-pass check (``estimated_disk_gb``, ``estimated_ram_gb``),
the caps, the load average before and after. ``--compare-dtype`` also keeps the same samples as
float32 in the same pass and reports how much float16 storage changes the fits (``dtype_check``).
With no arguments it runs a quick size (about a minute on two busy cores), as ``make bench`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from letkd.config import SupervisionConfig
from letkd.supervision.artifacts import fit_from_rows
from letkd.supervision.budget import folder_need
from letkd.supervision.codebook import kmeans_points_per_centroid
from letkd.supervision.extract import RowFile
from letkd.supervision.kmeans import nearest_center
from letkd.supervision.rowcache import ensure_rows, kmeans_training_rows, row_request
from letkd.supervision.spec import CodebookSpec, SubclassSpec

GB = 1e9
SUBCLUSTERS = 8


class ImageIndices(Dataset):
    """Image ``i`` is the tensor ``[i]``; its class is ``i · C // n`` (classes in dataset order)."""

    def __init__(self, num_images: int, classes: int) -> None:
        self.num_images, self.classes = num_images, classes

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int):
        return torch.tensor([i], dtype=torch.int64), i * self.classes // self.num_images


class SyntheticMaps(nn.Module):
    """Maps ``(B, D, h, w)`` of images given by index: class mean + one of 8 sub-cluster offsets per
    location + unit Gaussian noise, the noise seeded by the first image index of the batch."""

    def __init__(self, dim: int, classes: int, num_images: int, grid: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("class_means", torch.randn(classes, dim, generator=g) * 0.6)
        self.register_buffer("offsets", torch.randn(classes, SUBCLUSTERS, dim, generator=g) * 0.6)
        self.classes, self.num_images, self.grid, self.seed = classes, num_images, grid, seed

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        images = index.reshape(-1)
        b, hw = len(images), self.grid * self.grid
        labels = images * self.classes // self.num_images
        sub = (images[:, None] * 7 + torch.arange(hw)[None, :] * 3) % SUBCLUSTERS
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(images[0]))
        rows = torch.randn(b, hw, self.class_means.shape[1], generator=g)
        rows += self.class_means[labels][:, None, :]
        rows += self.offsets[labels[:, None], sub]
        return rows.permute(0, 2, 1).reshape(b, -1, self.grid, self.grid)


class StandInTeacher(nn.Module):
    """A "teacher" whose tap ``features`` outputs :class:`SyntheticMaps` of its input indices."""

    def __init__(self, maps: SyntheticMaps) -> None:
        super().__init__()
        self.features = maps

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.features(index)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB (Linux reports ru_maxrss in kB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 2)


class Stage:
    """``with Stage(stages, name):`` records wall and CPU seconds and the peak RSS after the block."""

    def __init__(self, stages: dict[str, dict[str, float]], name: str) -> None:
        self.stages, self.name = stages, name

    def __enter__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc: object) -> None:
        self.stages[self.name] = {
            "seconds": time.perf_counter() - self.wall,
            "cpu_seconds": time.process_time() - self.cpu,
            "peak_rss_gb": peak_rss_gb(),
        }


def decode_rate(seconds: float, folder: Path) -> tuple[float, float]:
    """Images per wall second and per CPU second that one process (one thread) decodes and transforms with
    ImageNet's test transform: a 500x375 JPEG (ImageNet's typical size, quality 90) → Resize(256) →
    CenterCrop(224) → normalise. Per CPU second is what one idle core would do."""
    from PIL import Image

    from letkd.data.files import read_rgb
    from letkd.data.transforms import resize_center_crop

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    smooth = np.stack([np.sin(xx / 40.0 + c) * np.cos(yy / 30.0 - c) for c in range(3)], axis=-1)
    pixels = np.clip(127 + 90 * smooth + rng.normal(scale=12, size=smooth.shape), 0, 255).astype(np.uint8)
    path = folder / "decode_probe.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    transform = resize_center_crop((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 256, 224)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        count, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            transform(read_rgb(path))
            count += 1
        return count / (time.perf_counter() - t0), count / (time.process_time() - c0)
    finally:
        torch.set_num_threads(threads)
        path.unlink()


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_supervision_scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rows", type=int, default=500_000, help="feature rows (images x 49)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--out", default=None, help="folder for the row folders (default: a temporary one)")
    p.add_argument("--templates", type=int, default=256, help="codebook K")
    p.add_argument("--max-rows", type=int, default=65_536, help="supervision.max_rows")
    p.add_argument("--rows-per-class", type=int, default=512, help="supervision.rows_per_class")
    p.add_argument("--lda", type=int, default=60, help="LDA components")
    p.add_argument("--kmeans-iters", type=int, default=20, help="supervision.kmeans_iters")
    p.add_argument(
        "--codebook-iters",
        type=int,
        default=None,
        help="iterations of the codebook's K-means only (default: --kmeans-iters); fewer keep a "
        "CPU run short, the JSON then also extrapolates the codebook time to --kmeans-iters",
    )
    p.add_argument("--batch-images", type=int, default=256)
    p.add_argument("--grid", type=int, default=7, help="locations per image: grid x grid")
    p.add_argument(
        "--decode-seconds",
        type=float,
        default=0.0,
        help="also measure, for this long, how many ImageNet-sized JPEGs one process decodes and "
        "transforms (ImageNet's test transform): the CPU side of a real teacher pass",
    )
    p.add_argument("--compare-dtype", action="store_true", help="also keep float32 samples; compare fits")
    p.add_argument("--keep", action="store_true", help="keep --out's row folders at the end")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def dtype_check(
    args: argparse.Namespace, folders: list[RowFile], sup16: SupervisionConfig, sup32: SupervisionConfig
) -> dict:
    """How much float16 storage of the samples changes the fits (the same rows, seeds and code)."""
    sc16, cb16, sc32, cb32 = folders
    classes = args.classes
    rows32 = np.asarray(cb32.rows)
    spec = CodebookSpec("features", False, args.templates)
    km16, _ = fit_from_rows(spec, cb16, sup16, classes, progress=False)
    km32, _ = fit_from_rows(spec, cb32, sup32, classes, progress=False)
    obj16 = float(nearest_center(rows32, km16.centers)[1].astype(np.float64).mean())
    obj32 = float(nearest_center(rows32, km32.centers)[1].astype(np.float64).mean())
    sub = SubclassSpec("features", False, SUBCLUSTERS, args.lda)
    s16, _ = fit_from_rows(sub, sc16, sup16, classes, progress=False)
    s32, _ = fit_from_rows(sub, sc32, sup32, classes, progress=False)
    x = torch.from_numpy(np.asarray(sc32.rows)[:, :, None, None])
    y = torch.from_numpy(np.asarray(sc32.labels))
    same = float((s16.assign(x, y) == s32.assign(x, y)).double().mean())
    return {
        "codebook_objective_f16": obj16,
        "codebook_objective_f32": obj32,
        "codebook_objective_rel_diff": obj16 / obj32 - 1,
        "subclass_same_assignment": same,
        "score_matrix_max_abs_diff": float((s16.score_matrix - s32.score_matrix).abs().max()),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (``argv`` None: the command line when run as a module, else the quick size)."""
    args = parse([] if argv is None and __name__ != "__main__" else argv)
    t_start, load_before = time.perf_counter(), os.getloadavg()
    out = Path(args.out) if args.out else Path(__import__("tempfile").mkdtemp(prefix="bench_scale_"))
    locations = args.grid * args.grid
    num_images = max(1, round(args.rows / locations))
    rows = num_images * locations
    teacher = StandInTeacher(SyntheticMaps(args.dim, args.classes, num_images, args.grid, seed=0))
    dataset = ImageIndices(num_images, args.classes)
    sup = {"cache_dir": str(out), "kmeans_iters": args.kmeans_iters, "extract_batch_size": args.batch_images,
           "max_rows": args.max_rows, "rows_per_class": args.rows_per_class}  # fmt: skip
    sup16 = SupervisionConfig(**sup, sample_dtype="float16")
    specs = [
        SubclassSpec("features", False, SUBCLUSTERS, args.lda),
        CodebookSpec("features", False, args.templates),
    ]
    fields = {"benchmark": "supervision_scale", "rows": rows, "dim": args.dim, "classes": args.classes}
    needed = [(s, row_request(s, "features", fields, sup16, args.classes)) for s in specs]
    sup32 = SupervisionConfig(**sup, sample_dtype="float32")
    if args.compare_dtype:
        needed += [(s, row_request(s, "features", fields, sup32, args.classes)) for s in specs]
    shape = (args.dim, args.grid, args.grid)
    kmeans_rows = kmeans_training_rows(specs, sup16)
    needs = [folder_need(r, shape, num_images, [s], args.batch_images, kmeans_rows) for s, r in needed]
    progress = not args.no_progress
    stages: dict[str, dict[str, float]] = {}
    with Stage(stages, "stream"):
        ensure_rows(needed, teacher, lambda: dataset, sup16, torch.device("cpu"), progress)
    folders = [RowFile.open(r.folder) for _, r in needed]
    with Stage(stages, "subclass"):
        subclass, _ = fit_from_rows(specs[0], folders[0], sup16, args.classes, progress=progress)
    codebook_iters = args.codebook_iters or args.kmeans_iters
    sup_codebook = sup16.model_copy(update={"kmeans_iters": codebook_iters})
    with Stage(stages, "codebook"):
        codebook, _ = fit_from_rows(specs[1], folders[1], sup_codebook, args.classes, progress=progress)
    result = {
        "rows": rows,
        "dim": args.dim,
        "classes": args.classes,
        "seconds": round(time.perf_counter() - t_start, 1),
        **{f"{name}_seconds": round(v["seconds"], 1) for name, v in stages.items()},
        **{f"{name}_cpu_seconds": round(v["cpu_seconds"], 1) for name, v in stages.items()},
        "peak_rss_gb": peak_rss_gb(),
        **{f"peak_rss_gb_after_{name}": v["peak_rss_gb"] for name, v in stages.items()},
        "disk_gb": round(sum(folder_bytes(f.path) for f in folders[:2]) / GB, 3),
        "full_rows_gb": round(rows * args.dim * 4 / GB, 2),
        "estimated_disk_gb": round(sum(n.disk for n in needs[:2]) / GB, 3),
        "estimated_ram_gb": round(max([sum(n.pass_ram for n in needs)] + [n.fit_ram for n in needs]) / GB, 2),
        "templates": args.templates,
        "max_rows": args.max_rows,
        "kmeans_rows": min(
            args.max_rows, args.templates * (kmeans_points_per_centroid(args.max_rows, args.templates) or 0)
        ),
        "rows_per_class": args.rows_per_class,
        "kmeans_iters": args.kmeans_iters,
        "codebook_iters": codebook_iters,
        "codebook_kmeans_seconds": round(codebook.fit_info["seconds_kmeans"], 1),
        "codebook_assign_seconds": round(codebook.fit_info["seconds_assign"], 1),
        "sample_rows": [f.num_rows for f in folders[:2]],
        "kmeans_objective": codebook.fit_info["kmeans_objective"],
        "lda_components": subclass.fit_info["lda_components"],
        "threads": torch.get_num_threads(),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    if codebook_iters != args.kmeans_iters:  # Lloyd iterations cost the same: scale the measured ones
        per_iter = codebook.fit_info["seconds_kmeans"] / codebook_iters
        result[f"codebook_seconds_at_{args.kmeans_iters}_iters"] = round(
            per_iter * args.kmeans_iters + codebook.fit_info["seconds_assign"], 1
        )
    if args.decode_seconds > 0:
        wall, cpu = decode_rate(args.decode_seconds, out)
        result["decode_images_per_s"] = round(wall, 1)
        result["decode_images_per_cpu_s"] = round(cpu, 1)
    if args.compare_dtype:
        result["dtype_check"] = dtype_check(args, folders, sup16, sup32)
    if not args.keep:
        shutil.rmtree(out / "rows", ignore_errors=True)
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
