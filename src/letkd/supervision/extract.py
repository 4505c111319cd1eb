"""Row folders: teacher feature rows of one tap (all of them, or a seeded sample) on disk.

Every spatial location of every image is one row: a batch of features ``(B, D, H, W)`` gives ``B·H·W``
rows in ``(b, h, w)`` order, each labelled with its image's label, numbered ``image · H·W + location``.
A folder holds every row of a tap or a sample of them (see :mod:`letkd.supervision.collect`), in row
order:

- ``rows.f32`` (N×D float32, C order) or ``rows.f16`` (float16, for samples), ``labels.i64`` (N int64);
- for a sample, ``index.i64`` (N int64): the row numbers; with class statistics over *all* rows (for
  LDA), ``class_counts.npy``, ``class_means.npy``, ``within_scatter.npy`` (float64);
- ``meta.json`` (written last; a folder without it is incomplete).

A folder is written under a temporary name ``.<name>.*.tmp`` and renamed when complete.
:func:`open_checked` refuses a damaged folder (files shorter or longer than ``meta.json`` says) and
:func:`check_finite` features with NaN or infinity.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from letkd.supervision.errors import CorruptRowsError, NonFiniteFeaturesError
from letkd.supervision.lda import ClassScatter

ROWS_FILE = "rows.f32"
ROWS_FILES = {"float32": ROWS_FILE, "float16": "rows.f16"}
LABELS_FILE = "labels.i64"
INDEX_FILE = "index.i64"
META_FILE = "meta.json"
STATS_FILES = {"counts": "class_counts.npy", "means": "class_means.npy", "within": "within_scatter.npy"}


@dataclass
class RowFile:
    """A finished row folder: ``rows`` (N, D) memmap, ``labels`` (N,) int64 memmap, ``meta``."""

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
        """N, the number of rows kept."""
        return int(self.meta["num_rows"])

    @property
    def total_rows(self) -> int:
        """Rows of the whole pass (images × locations); equals :attr:`num_rows` unless sampled."""
        return int(self.meta.get("total_rows", self.num_rows))

    @property
    def dim(self) -> int:
        """D, the feature dimension of a row."""
        return int(self.meta["dim"])

    @property
    def dtype(self) -> str:
        """Storage type of the rows: ``float32`` or ``float16``."""
        return str(self.meta.get("dtype", "float32"))

    @property
    def sampled(self) -> bool:
        """True when the folder holds a sample of the rows, not all of them."""
        return self.meta.get("keep", "all") != "all"

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the (pooled) feature map each image contributed."""
        h, w = self.meta["grid"]
        return int(h), int(w)

    @property
    def rows(self) -> np.memmap:
        """Read-only memmap of the rows, shape (N, D), float32 or float16."""
        if self._rows is None:
            self._rows = np.memmap(
                self.path / ROWS_FILES[self.dtype],
                dtype=self.dtype,
                mode="r",
                shape=(self.num_rows, self.dim),
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

    @property
    def index(self) -> np.ndarray:
        """Row number of each row (``image · H·W + location``), shape (N,), int64."""
        if not self.sampled:
            return np.arange(self.num_rows, dtype=np.int64)
        return np.memmap(self.path / INDEX_FILE, dtype=np.int64, mode="r", shape=(self.num_rows,))

    def scatter(self) -> ClassScatter | None:
        """Class statistics over every row of the pass (sub-class samples), or None if not stored."""
        if not self.meta.get("stats"):
            return None
        try:
            loaded = {k: np.load(self.path / name, allow_pickle=False) for k, name in STATS_FILES.items()}
        except (OSError, ValueError) as exc:
            raise CorruptRowsError(
                f"row folder {self.path} has unreadable class statistics ({exc})"
            ) from None
        return ClassScatter(**loaded)


def _expected_sizes(meta: dict[str, Any]) -> list[tuple[str, int]]:
    num_rows, dim = int(meta["num_rows"]), int(meta["dim"])
    dtype = str(meta.get("dtype", "float32"))
    if dtype not in ROWS_FILES:
        raise ValueError(f"unknown row dtype {dtype!r}")
    sizes = [(ROWS_FILES[dtype], num_rows * dim * np.dtype(dtype).itemsize), (LABELS_FILE, num_rows * 8)]
    if meta.get("keep", "all") != "all":
        sizes.append((INDEX_FILE, num_rows * 8))
    return sizes


def open_checked(path: str | os.PathLike) -> RowFile | None:
    """The finished row folder at ``path``, None when there is none, :class:`CorruptRowsError` if damaged.

    Damaged: ``meta.json`` missing from an existing folder, unreadable or without the row count and
    dimension, a data file whose size differs from the one ``meta.json`` gives (a truncated write), or
    missing class statistics.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        sizes = _expected_sizes(meta)
        num_rows, dim = int(meta["num_rows"]), int(meta["dim"])
    except FileNotFoundError:
        raise CorruptRowsError(f"row folder {path} is incomplete ({META_FILE} missing)") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptRowsError(f"row folder {path} has an unreadable {META_FILE} ({exc!r})") from None
    for name, size in sizes:
        file = path / name
        have = file.stat().st_size if file.is_file() else None
        if have != size:
            state = "missing" if have is None else ("truncated" if have < size else "too long")
            raise CorruptRowsError(
                f"row folder {path} is damaged: {name} is {state} ({have} bytes, {META_FILE} says "
                f"{num_rows} rows x {dim} = {size} bytes)"
            )
    if meta.get("stats"):
        for name in STATS_FILES.values():
            if not (path / name).is_file():
                raise CorruptRowsError(f"row folder {path} is damaged: {name} is missing")
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
    dtype: str = "float32",
) -> RowFile:
    """Run ``teacher`` over ``dataset`` and write the features at ``tap`` as rows to the folder ``out_path``.

    ``dataset`` yields ``(image (C, H_in, W_in), label)``; pass the training split built with the *test*
    transform (no augmentation). The teacher is put in eval mode, moved to ``device`` and run under
    ``torch.inference_mode()``. ``pool2x2`` applies a 2×2/stride-2 average pool to the tap output.
    Each image's map ``(D, H, W)`` yields H·W rows in ``(h, w)`` order. ``max_rows`` keeps the seeded
    sample of that many rows (stored as ``dtype``) picked by a hash of (seed, image, location), in row
    order. One pass of :func:`letkd.supervision.stream.collect_rows`; the folder is written under a
    temporary name and renamed when complete (an existing folder at ``out_path`` is replaced).
    """
    from letkd.supervision.collect import RowRequest
    from letkd.supervision.stream import collect_rows
    from letkd.taps import resolve_tap

    out_path = Path(out_path)
    request = RowRequest(
        tap=tap,
        module_path=resolve_tap(teacher, tap),
        pool2x2=pool2x2,
        folder=out_path,
        keep="all" if max_rows is None else "rows",
        cap=max_rows,
        dtype=dtype if max_rows is not None else "float32",
        seed=seed,
    )
    (done,) = collect_rows(
        teacher,
        dataset,
        [request],
        batch_size=batch_size,
        device=device,
        progress=progress,
        num_workers=num_workers,
    )
    assert done is not None
    return done
