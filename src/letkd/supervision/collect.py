"""What one teacher pass keeps of a tap's rows for one row folder, and how the processes merge it.

A :class:`RowRequest` names a folder and what it holds:

- ``keep="all"``: every row, float32, in row order (streamed to disk as it comes: memory is one batch);
- ``keep="rows"``: the seeded sample of ``cap`` rows with the smallest priorities (see
  :mod:`letkd.supervision.sampling`), for a codebook's K-means;
- ``keep="per_class"``: the seeded sample of ``cap`` rows of each class, for the sub-class K-means, and
  (``stats``) the class counts, means and within-class scatter of *every* row, for LDA.

A request whose cap covers every row of the pass (``cap >= images · H · W``) keeps them all, exactly as
``keep="all"``. Samples are held in memory (at most about 1.25·cap rows, as ``dtype``) and written when
the pass ends. Under ``torchrun`` every process runs a :class:`FolderCollector` on its shard; at the end
the statistics are summed, the sample keys gathered and the selected rows sent to process 0, which
writes the folder: the same folder for any number of processes (the sample bit for bit, the sums up to
float64 rounding).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch

from letkd.supervision.extract import (
    INDEX_FILE,
    LABELS_FILE,
    META_FILE,
    ROWS_FILES,
    STATS_FILES,
    RowFile,
)
from letkd.supervision.lda import ScatterAccumulator
from letkd.supervision.sampling import (
    MAX_PRIORITY,
    SamplePool,
    bottom_k,
    inclusion_threshold,
    row_priorities,
)
from letkd.supervision.shards import Shards

Keep = Literal["all", "rows", "per_class"]


@dataclass(frozen=True)
class RowRequest:
    """One row folder to fill in a teacher pass: the tap, and which rows (and statistics) to keep."""

    tap: str
    module_path: str
    pool2x2: bool
    folder: Path
    keep: Keep = "all"
    cap: int | None = None
    dtype: str = "float32"
    seed: int = 0
    num_classes: int = 0
    stats: bool = False

    @property
    def source(self) -> tuple[str, bool]:
        """The feature map it reads: ``(module path, pool2x2)``."""
        return self.module_path, self.pool2x2

    def keeps_all(self, total_rows: int) -> bool:
        """Whether every row of a pass of ``total_rows`` rows is kept (no cap, or a cap that covers them)."""
        return self.keep == "all" or self.cap is None or self.cap >= total_rows


def _write(fh: BinaryIO, array: np.ndarray) -> None:
    fh.write(np.ascontiguousarray(array).tobytes())


def _read_chunks(path: Path, dtype: np.dtype, dim: int, count: int, step: int) -> Iterator[np.ndarray]:
    with open(path, "rb") as fh:
        for lo in range(0, count, step):
            m = min(step, count - lo)
            yield np.frombuffer(fh.read(m * dim * dtype.itemsize), dtype=dtype).reshape(m, dim)


class FolderCollector:
    """Fills the folder of one :class:`RowRequest` during a pass over this process's shard of the images."""

    def __init__(
        self,
        request: RowRequest,
        shape: tuple[int, int, int],
        num_images: int,
        shards: Shards,
        batch_images: int,
        device: torch.device,
    ) -> None:
        self.request, self.shards = request, shards
        self.dim, h, w = shape
        self.grid, self.locations = (h, w), h * w
        self.num_images = num_images
        self.total_rows = num_images * self.locations
        lo, hi = shards.range(num_images)
        self.keep_all = request.keeps_all(self.total_rows)
        self.dtype = np.dtype("float32" if self.keep_all else request.dtype)
        folder = request.folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{folder.name}." + ("" if shards.is_main else f"rank{shards.rank}.")
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=folder.parent))
        self.count = 0
        self.stats = (
            ScatterAccumulator(request.num_classes, self.dim, device)
            if request.stats and not self.keep_all
            else None
        )
        self.pool: SamplePool | None = None
        self.files: tuple[BinaryIO, BinaryIO] | None = None
        if self.keep_all:
            self.files = (open(self.tmp / ROWS_FILES["float32"], "wb"), open(self.tmp / LABELS_FILE, "wb"))
        else:
            assert request.cap is not None
            per_class = request.keep == "per_class"
            threshold = MAX_PRIORITY if per_class else inclusion_threshold(request.cap, self.total_rows)
            self.pool = SamplePool(
                request.cap,
                request.num_classes if per_class else 1,
                self.dim,
                self.dtype,
                max_rows=(hi - lo) * self.locations,
                batch_rows=batch_images * self.locations,
                per_label=per_class,
                threshold=threshold,
                what=f"teacher features at tap {request.tap!r}",
            )

    def add(self, rows: torch.Tensor, labels: torch.Tensor, first_image: int) -> None:
        """Rows ``(b·H·W, D)`` (float32, any device) of images ``first_image … first_image + b − 1``."""
        labels_np = labels.cpu().numpy()
        if self.stats is not None:
            self.stats.add(rows, labels, group=self.locations)
        b = len(rows) // self.locations
        if self.files is not None:
            _write(self.files[0], rows.cpu().numpy())
            _write(self.files[1], labels_np)
            self.count += len(rows)
            return
        assert self.pool is not None
        if self.request.keep == "per_class" and len(labels_np):
            top = int(labels_np.max())
            if int(labels_np.min()) < 0 or top >= self.request.num_classes:
                raise ValueError(f"labels must lie in [0, {self.request.num_classes}), got up to {top}")
        priority = row_priorities(self.request.seed, np.arange(first_image, first_image + b), self.locations)
        mask = self.pool.candidates(priority, labels_np)
        if not mask.any():
            return
        index = np.arange(first_image * self.locations, (first_image + b) * self.locations)[mask]
        chosen = rows[torch.from_numpy(mask).to(rows.device)].cpu().numpy()
        self.pool.add(chosen, priority[mask], index, labels_np[mask])

    def finish(self) -> RowFile | None:
        """Merge the processes' parts; process 0 writes the folder and returns it (None elsewhere)."""
        try:
            meta = self._merge_all() if self.keep_all else self._merge_sample()
            if not self.shards.is_main:
                return None
            meta.update(
                dim=self.dim,
                grid=list(self.grid),
                num_images=self.num_images,
                total_rows=self.total_rows,
                dtype=str(self.dtype),
                label_dtype="int64",
                keep="all" if self.keep_all else self.request.keep,
                cap=self.request.cap,
                seed=self.request.seed,
                tap=self.request.tap,
                module_path=self.request.module_path,
                pool2x2=bool(self.request.pool2x2),
            )
            (self.tmp / META_FILE).write_text(json.dumps(meta, indent=1))
            folder = self.request.folder
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(self.tmp, folder)
            return RowFile.open(folder)
        finally:
            self.abort()

    def abort(self) -> None:
        """Close and delete this process's temporary files (what :meth:`finish` has not moved in place)."""
        if self.files is not None:
            for fh in self.files:
                fh.close()
            self.files = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- merging ------------------------------------------------------------------------------------------

    def _merge_all(self) -> dict[str, Any]:
        assert self.files is not None
        for fh in self.files:
            fh.close()
        counts = [int(c[0]) for c in self.shards.all_gather(np.array([self.count], dtype=np.int64))]
        rows_path, labels_path = self.tmp / ROWS_FILES["float32"], self.tmp / LABELS_FILE
        parts = ((rows_path, np.dtype(np.float32), self.dim), (labels_path, np.dtype(np.int64), 1))
        for path, dtype, dim in parts:
            with open(path, "ab") if self.shards.is_main else open(os.devnull, "wb") as out:

                def local(step: int, path: Path = path, dtype: np.dtype = dtype, dim: int = dim):
                    # process 0's own rows are already in place at the start of its files
                    count = 0 if self.shards.is_main else self.count
                    return _read_chunks(path, dtype, dim, count, step)

                self.shards.gather_rows(local, counts, dim, dtype, lambda chunk, out=out: _write(out, chunk))
        self.files = None
        return {"num_rows": sum(counts)}

    def _merge_sample(self) -> dict[str, Any]:
        assert self.pool is not None
        mine = self.pool.finish()
        keys = [self.shards.all_gather(a) for a in (mine.priority, mine.index, mine.label)]
        priority, index, label = (np.concatenate(parts) for parts in keys)
        owner = np.concatenate([np.full(len(p), r, dtype=np.int64) for r, p in enumerate(keys[0])])
        groups = label if self.request.keep == "per_class" else np.zeros(len(label), dtype=np.int64)
        selected = bottom_k(priority, index, groups, int(self.request.cap or 0))
        # shards are contiguous blocks of images in rank order: positions in rank order are row order
        counts = np.bincount(owner[selected], minlength=self.shards.world).tolist()
        offset = sum(len(p) for p in keys[0][: self.shards.rank])
        own = selected[owner[selected] == self.shards.rank] - offset

        def local(step: int) -> Iterator[np.ndarray]:
            for lo in range(0, len(own), step):
                yield mine.rows[own[lo : lo + step]]

        meta: dict[str, Any] = {"num_rows": len(selected)}
        with (
            open(self.tmp / ROWS_FILES[str(self.dtype)], "wb")
            if self.shards.is_main
            else open(os.devnull, "wb") as out
        ):
            self.shards.gather_rows(local, counts, self.dim, self.dtype, lambda chunk: _write(out, chunk))
        if self.stats is not None:
            shift = self.shards.broadcast(self.stats.shift.cpu())
            self.stats.recentre(shift)  # type: ignore[arg-type]
            for tensor in (self.stats.counts, self.stats.sums, self.stats.gram):
                self.shards.sum_(tensor)
        if self.shards.is_main:
            (self.tmp / LABELS_FILE).write_bytes(np.ascontiguousarray(label[selected]).tobytes())
            (self.tmp / INDEX_FILE).write_bytes(np.ascontiguousarray(index[selected]).tobytes())
            if self.stats is not None:
                scatter = self.stats.result()
                for key, name in STATS_FILES.items():
                    np.save(self.tmp / name, getattr(scatter, key), allow_pickle=False)
                meta.update(stats=True, num_classes=self.request.num_classes)
            meta["pool_compactions"] = self.pool.compactions
        return meta
