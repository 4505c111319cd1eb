"""The row folders of the supervision cache: which folder a spec reads, and one pass that fills the missing.

A spec without a cap reads every row of its tap (``rows/<hash>/`` keyed by teacher, tap, pooling and
dataset, shared by every such spec of the tap: the layout of earlier letkd versions). A codebook with
``supervision.max_rows`` reads a seeded sample of that many rows; a sub-class spec with
``supervision.rows_per_class`` a seeded per-class sample plus class statistics of every row; their
folder keys add the cap, the storage type and the seed.

:func:`ensure_rows` locks the folders a fit needs (in sorted order, so two processes never wait on each
other), repairs damaged ones, checks that the missing ones fit on the disk and in memory
(:mod:`letkd.supervision.budget`) *before* the teacher runs, and fills them all in one teacher pass.
Under ``torchrun`` every process takes part in the pass (process 0 locks, checks and writes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from letkd.config import SupervisionConfig
from letkd.supervision.budget import NotEnoughSpaceError, check_budget, folder_need
from letkd.supervision.codebook import kmeans_points_per_centroid
from letkd.supervision.collect import RowRequest
from letkd.supervision.errors import CorruptRowsError
from letkd.supervision.extract import open_checked
from letkd.supervision.lock import EntryLock
from letkd.supervision.repair import move_aside, remove_stale_temps, report_stale, warn
from letkd.supervision.shards import Shards
from letkd.supervision.spec import CodebookSpec, Spec
from letkd.supervision.store import cache_key
from letkd.supervision.stream import collect_rows, feature_shapes


def sample_fields(spec: Spec, sup_cfg: SupervisionConfig) -> dict[str, Any] | None:
    """The ``sample`` field of a capped spec's artefact and folder keys (None without a cap)."""
    if isinstance(spec, CodebookSpec):
        if sup_cfg.max_rows is None:
            return None
        return {"rows": sup_cfg.max_rows, "dtype": sup_cfg.sample_dtype}
    if sup_cfg.rows_per_class is None:
        return None
    return {"rows_per_class": sup_cfg.rows_per_class, "dtype": sup_cfg.sample_dtype}


def row_request(
    spec: Spec,
    module_path: str,
    rows_fields: dict[str, Any],
    sup_cfg: SupervisionConfig,
    num_classes: int,
) -> RowRequest:
    """The folder (under ``sup_cfg.cache_dir/rows``) and contents that ``spec`` reads."""
    sample = sample_fields(spec, sup_cfg)
    common = {"tap": spec.teacher_tap, "module_path": module_path, "pool2x2": spec.teacher_pool}
    root = Path(sup_cfg.cache_dir) / "rows"
    if sample is None:
        # every row, float32; the class count and sample type size the caps the pre-pass check suggests
        folder = root / cache_key(rows_fields)[:24]
        return RowRequest(folder=folder, num_classes=num_classes, dtype=sup_cfg.sample_dtype, **common)
    per_class = not isinstance(spec, CodebookSpec)
    fields = {**rows_fields, "sample": sample, "seed": sup_cfg.seed}
    if per_class:
        fields["num_classes"] = num_classes
    return RowRequest(
        folder=root / cache_key(fields)[:24],
        keep="per_class" if per_class else "rows",
        cap=sup_cfg.rows_per_class if per_class else sup_cfg.max_rows,
        dtype=sup_cfg.sample_dtype,
        seed=sup_cfg.seed,
        num_classes=num_classes if per_class else 0,
        stats=per_class,
        **common,
    )


@dataclass
class _Folder:
    request: RowRequest
    specs: list[Spec]


def _lock(folder: Path, tap: str) -> EntryLock:
    return EntryLock(folder.with_name(folder.name + ".lock"), f"feature rows of {tap!r}")


def _complete(folder: Path, locked_at: float) -> bool:
    """Whether the folder is finished; a damaged one is moved aside (with a warning): not complete.

    Call it holding the folder's lock (acquired at ``locked_at``): older temporaries are leftovers.
    """
    report_stale(remove_stale_temps(folder.parent, f".{folder.name}.*.tmp", locked_at))
    try:
        return open_checked(folder) is not None
    except CorruptRowsError as exc:
        moved = move_aside(folder)
        warn(f"{exc}; moved it to {moved}, extracting the rows again")
        return False


def kmeans_training_rows(specs: Sequence[Spec], sup_cfg: SupervisionConfig) -> dict[int, int | None]:
    """For each codebook K, the rows its K-means trains on (None = all kept rows)."""
    out: dict[int, int | None] = {}
    for spec in specs:
        if isinstance(spec, CodebookSpec):
            per = kmeans_points_per_centroid(sup_cfg.max_rows, spec.num_templates)
            out[spec.num_templates] = None if per is None else spec.num_templates * per
    return out


def ensure_rows(
    needed: Sequence[tuple[Spec, RowRequest]],
    teacher: nn.Module,
    make_dataset: Callable[[], Dataset],
    sup_cfg: SupervisionConfig,
    device: torch.device,
    progress: bool,
    num_workers: int = 0,
    shards: Shards | None = None,
) -> None:
    """Make sure the row folder of every ``(spec, request)`` exists, filling the missing in one pass.

    Raises :class:`~letkd.supervision.budget.NotEnoughSpaceError` before the pass when the missing folders
    and their fits would not fit on the disk or in memory.
    """
    shards = shards or Shards()
    folders: dict[Path, _Folder] = {}
    for spec, request in needed:
        folders.setdefault(request.folder, _Folder(request, [])).specs.append(spec)
    locks: list[EntryLock] = []
    dataset: Dataset | None = None
    try:
        plan: tuple[str, Any, Any] = ("none", None, None)
        if shards.is_main:
            missing = []
            for path in sorted(folders):
                lock = _lock(path, folders[path].request.tap).acquire()
                locks.append(lock)
                assert lock.acquired_at is not None
                if not _complete(path, lock.acquired_at):
                    missing.append(folders[path])
            if missing:
                dataset = make_dataset()
                plan = _plan(missing, teacher, dataset, sup_cfg, device)
        plan = shards.broadcast(plan)  # type: ignore[assignment]
        if plan[0] == "error":
            raise NotEnoughSpaceError(plan[1])
        if plan[0] == "collect":
            collect_rows(
                teacher,
                dataset if dataset is not None else make_dataset(),
                plan[1],
                batch_size=sup_cfg.extract_batch_size,
                device=device,
                progress=progress,
                num_workers=num_workers,
                shards=shards,
                shapes=plan[2],
            )
    finally:
        for lock in reversed(locks):
            lock.release()


def _plan(
    missing: list[_Folder],
    teacher: nn.Module,
    dataset: Dataset,
    sup_cfg: SupervisionConfig,
    device: torch.device,
) -> tuple[str, Any, Any]:
    """``("collect", requests, shapes)``, or ``("error", message, None)`` when they would not fit."""
    shapes = feature_shapes(teacher, dataset, [f.request.source for f in missing], device)
    num_images = len(dataset)  # type: ignore[arg-type]
    kmeans_rows = kmeans_training_rows([s for f in missing for s in f.specs], sup_cfg)
    needs = [
        folder_need(
            f.request, shapes[f.request.source], num_images, f.specs, sup_cfg.extract_batch_size, kmeans_rows
        )
        for f in missing
    ]
    try:
        check_budget(needs, sup_cfg.cache_dir)
    except NotEnoughSpaceError as exc:
        return "error", str(exc), None
    return "collect", [f.request for f in missing], shapes
