"""Stream a teacher's features at one tap over a dataset to a row file on disk.

Every spatial location of every image becomes one row: a batch of features ``(B, D, H, W)`` gives
``B·H·W`` rows in ``(b, h, w)`` order, each labelled with its image's label. Rows go to a preallocated
float32 file written batch by batch (positioned writes, not a growing array), so peak memory is bounded
by one batch whatever the dataset size; the file is read back as a ``numpy.memmap``.

Layout of a row folder: ``rows.f32`` (N×D float32, C order), ``labels.i64`` (N int64) and ``meta.json``
(written last; a folder without it is incomplete). The folder is written under a temporary name
``.<name>.*.tmp`` and renamed when complete. :func:`open_checked` refuses a damaged folder (files shorter or
longer than ``meta.json`` says) and :func:`check_finite` features with NaN or infinity.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from letkd.supervision.errors import CorruptRowsError, NonFiniteFeaturesError
from letkd.taps import FeatureTaps, resolve_tap

ROWS_FILE = "rows.f32"
LABELS_FILE = "labels.i64"
META_FILE = "meta.json"


@dataclass
class RowFile:
    """A finished row folder: ``rows`` (N, D) float32 memmap, ``labels`` (N,) int64 memmap, ``meta``."""

    path: Path
    meta: dict[str, Any]
    _rows: np.memmap | None = field(default=None, repr=False)
    _labels: np.memmap | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> RowFile:
        """Open a row folder written by :func:`extract_rows`; raise if it is missing or incomplete."""
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"no finished row file at {path} ({META_FILE} missing)")
        return cls(path=path, meta=json.loads(meta_path.read_text()))

    @property
    def num_rows(self) -> int:
        """N, the number of rows."""
        return int(self.meta["num_rows"])

    @property
    def dim(self) -> int:
        """D, the feature dimension of a row."""
        return int(self.meta["dim"])

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the (pooled) feature map each image contributed."""
        h, w = self.meta["grid"]
        return int(h), int(w)

    @property
    def rows(self) -> np.memmap:
        """Read-only memmap of the rows, shape (N, D), float32."""
        if self._rows is None:
            self._rows = np.memmap(
                self.path / ROWS_FILE, dtype=np.float32, mode="r", shape=(self.num_rows, self.dim)
            )
        return self._rows

    @property
    def labels(self) -> np.memmap:
        """Read-only memmap of the row labels (the image labels), shape (N,), int64."""
        if self._labels is None:
            self._labels = np.memmap(
                self.path / LABELS_FILE, dtype=np.int64, mode="r", shape=(self.num_rows,)
            )
        return self._labels


def open_checked(path: str | os.PathLike) -> RowFile | None:
    """The finished row folder at ``path``, None when there is none, :class:`CorruptRowsError` if damaged.

    Damaged: ``meta.json`` missing from an existing folder, unreadable or without the row count and
    dimension, or a data file whose size differs from the one ``meta.json`` gives (a truncated write).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        num_rows, dim = int(meta["num_rows"]), int(meta["dim"])
    except FileNotFoundError:
        raise CorruptRowsError(f"row folder {path} is incomplete ({META_FILE} missing)") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptRowsError(f"row folder {path} has an unreadable {META_FILE} ({exc!r})") from None
    for name, size in ((ROWS_FILE, num_rows * dim * 4), (LABELS_FILE, num_rows * 8)):
        file = path / name
        have = file.stat().st_size if file.is_file() else None
        if have != size:
            state = "missing" if have is None else ("truncated" if have < size else "too long")
            raise CorruptRowsError(
                f"row folder {path} is damaged: {name} is {state} ({have} bytes, {META_FILE} says "
                f"{num_rows} rows x {dim} = {size} bytes)"
            )
    return RowFile(path=path, meta=meta)


def non_finite_message(tap: str, detail: str) -> str:
    """The one-line message of :class:`NonFiniteFeaturesError` for the teacher tap ``tap``."""
    return (
        f"the teacher produces non-finite features (NaN or infinity) at tap {tap!r} ({detail}): "
        "nothing can be fitted on them; is the teacher checkpoint broken (diverged training, wrong file)?"
    )


def check_finite(rows: RowFile, tap: str, chunk_size: int = 1 << 16) -> None:
    """Raise :class:`NonFiniteFeaturesError` naming ``tap`` if any row holds NaN or infinity (streamed)."""
    from letkd.supervision.kmeans import row_chunks

    bad = 0
    for _, chunk in row_chunks(rows.rows, chunk_size):
        bad += int((~np.isfinite(chunk)).any(axis=1).sum())
    if bad:
        raise NonFiniteFeaturesError(non_finite_message(tap, f"{bad} of {rows.num_rows} rows in {rows.path}"))


def subsample_indices(total: int, max_rows: int | None, seed: int) -> np.ndarray | None:
    """Sorted random subset of ``range(total)`` of size ``max_rows`` (deterministic in ``seed``), or None."""
    if max_rows is None or max_rows >= total:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=max_rows, replace=False))


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        return batch["image"], batch["label"]
    images, labels = batch[0], batch[1]
    return images, torch.as_tensor(labels)


def extract_rows(
    teacher: nn.Module,
    dataset: Dataset,
    tap: str,
    out_path: str | os.PathLike,
    pool2x2: bool = False,
    batch_size: int = 256,
    max_rows: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    num_workers: int = 0,
) -> RowFile:
    """Run ``teacher`` over ``dataset`` and write the features at ``tap`` as rows to the folder ``out_path``.

    ``dataset`` yields ``(image (C, H_in, W_in), label)``; pass the training split built with the *test*
    transform (no augmentation). The teacher is put in eval mode, moved to ``device`` and run under
    ``torch.inference_mode()``. ``pool2x2`` applies a 2×2/stride-2 average pool to the tap output.
    Each image's map ``(D, H, W)`` yields H·W rows in ``(h, w)`` order; ``max_rows`` keeps a seeded, uniformly
    random subset of all rows in their original order. The folder is written under a temporary name and
    renamed when complete (an existing folder at ``out_path`` is replaced).
    """
    from tqdm.auto import tqdm

    from letkd.utils import tqdm_disable

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    path = resolve_tap(teacher, tap)
    num_images = len(dataset)  # type: ignore[arg-type]
    if num_images == 0:
        raise ValueError("cannot extract rows from an empty dataset")
    device = torch.device(device)
    was_training = teacher.training
    teacher.eval().to(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent))
    try:
        # the forward stops right after the tap, so no later in-place op can touch it: no copy needed
        with FeatureTaps(teacher, [path], stop_after_last=True, clone=False) as taps:

            def read(images: torch.Tensor) -> torch.Tensor:
                feats = taps(images.to(device, non_blocking=True))[path]
                return F.avg_pool2d(feats, kernel_size=2, stride=2) if pool2x2 else feats

            batches = tqdm(loader, desc=f"extract {tap}", unit="batch", disable=tqdm_disable(progress))
            meta = _stream_rows(read, tap, tmp, num_images, max_rows, seed, batches)
        meta.update(
            tap=tap,
            module_path=path,
            pool2x2=bool(pool2x2),
            seed=int(seed),
            max_rows=None if max_rows is None else int(max_rows),
        )
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if out_path.exists():
            shutil.rmtree(out_path)
        os.replace(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        teacher.train(was_training)
    return RowFile.open(out_path)


def _stream_rows(
    read: Callable[[torch.Tensor], torch.Tensor],
    tap: str,
    folder: Path,
    num_images: int,
    max_rows: int | None,
    seed: int,
    batches: Iterator[Any],
) -> dict[str, Any]:
    """Write the rows and labels of every batch at their final offsets; return the shape metadata.

    Raises :class:`NonFiniteFeaturesError` at the first batch with NaN or infinite features.
    """
    rows_fh = open(folder / ROWS_FILE, "wb")
    labels_fh = open(folder / LABELS_FILE, "wb")
    shape: tuple[int, int, int] | None = None
    keep: np.ndarray | None = None
    start = 0  # index of the batch's first row among all rows
    written = 0  # rows written so far
    try:
        with torch.inference_mode():
            for batch in batches:
                images, labels = _split_batch(batch)
                feats = read(images)
                if feats.dim() != 4:
                    raise ValueError(f"tap {tap!r} gives shape {tuple(feats.shape)}, not (B, D, H, W)")
                b, d, h, w = feats.shape
                if shape is None:
                    shape = (d, h, w)
                    total = num_images * h * w
                    keep = subsample_indices(total, max_rows, seed)
                    num_rows = total if keep is None else len(keep)
                    rows_fh.truncate(num_rows * d * 4)
                    labels_fh.truncate(num_rows * 8)
                elif (d, h, w) != shape:
                    raise ValueError(f"tap {tap!r} changed shape from {shape} to {(d, h, w)} between batches")
                rows = feats.float().permute(0, 2, 3, 1).reshape(b * h * w, d).cpu().numpy()
                if not np.isfinite(rows).all():
                    first = start // (h * w)
                    raise NonFiniteFeaturesError(non_finite_message(tap, f"images {first}-{first + b - 1}"))
                row_labels = labels.to(torch.int64).repeat_interleave(h * w).numpy()
                if keep is not None:
                    lo, hi = np.searchsorted(keep, [start, start + len(rows)])
                    rows, row_labels = rows[keep[lo:hi] - start], row_labels[keep[lo:hi] - start]
                rows_fh.seek(written * d * 4)
                rows_fh.write(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
                labels_fh.seek(written * 8)
                labels_fh.write(np.ascontiguousarray(row_labels, dtype=np.int64).tobytes())
                start += b * h * w
                written += len(rows)
    finally:
        rows_fh.close()
        labels_fh.close()
    assert shape is not None
    d, h, w = shape
    if start != num_images * h * w:
        raise RuntimeError(f"dataset yielded {start // (h * w)} images, expected {num_images}")
    return {
        "num_rows": written,
        "dim": d,
        "grid": [h, w],
        "num_images": num_images,
        "total_rows": start,
        "dtype": "float32",
        "label_dtype": "int64",
    }
