"""Build the supervision module of a spec: reuse the cached artefact, or extract rows, fit and save it.

Cache layout under ``SupervisionConfig.cache_dir``: ``<kind>-<hash>.safetensors`` artefacts (see
:mod:`letkd.supervision.store`) and ``rows/<hash>/`` feature rows (see :mod:`letkd.supervision.extract`),
keyed by teacher, tap, pooling and dataset, so a codebook and a sub-class spec on the same tap share one
extraction. Each fit and each extraction holds its entry's lock (``<entry>.lock``); a damaged entry is
moved aside with a warning and made again (see "Cache problems" in docs/supervision.md).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from letkd.config import SupervisionConfig
from letkd.device import select_device
from letkd.supervision.codebook import DEFAULT_MAX_POINTS_PER_CENTROID, fit_codebook
from letkd.supervision.errors import CorruptRowsError, NotEnoughRowsError
from letkd.supervision.extract import RowFile, check_finite, extract_rows, open_checked
from letkd.supervision.lock import EntryLock
from letkd.supervision.repair import move_aside, remove_stale_temps, report_stale, warn
from letkd.supervision.spec import CodebookSpec, Spec
from letkd.supervision.store import ArtifactCache, CachedArtifact, cache_key
from letkd.supervision.subclass import fit_subclasses
from letkd.taps import resolve_tap
from letkd.utils import sha256_file

EXTRACT_SPLIT = "train"
EXTRACT_TRANSFORM = "test"


class ArtifactNotCachedError(FileNotFoundError):
    """Raised by :func:`build_artifact` with ``fit=False`` when the artefact is not in the cache."""


def teacher_identity(
    teacher_name: str,
    checkpoint: str | os.PathLike | None,
    seed: int,
    teacher: nn.Module | None = None,
) -> str:
    """SHA-256 of the checkpoint file, or ``"untrained:<model>:<seed>"`` for a randomly initialised teacher.

    With ``teacher`` given, an untrained teacher's identity also ends with a hash of its weights, so two
    differently initialised teachers never share cached artefacts.
    """
    if checkpoint:
        return sha256_file(checkpoint)
    identity = f"untrained:{teacher_name}:{seed}"
    if teacher is not None:
        digest = hashlib.sha256()
        for name, tensor in sorted(teacher.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        identity += f":{digest.hexdigest()[:16]}"
    return identity


def kmeans_points_per_centroid(max_rows: int | None, num_centers: int) -> int | None:
    """faiss ``max_points_per_centroid`` for a K-means training-set cap of ``max_rows`` rows.

    None (no cap given) → the project default (see docs/supervision.md); a cap ≥ N trains on all rows.
    """
    if max_rows is None:
        return DEFAULT_MAX_POINTS_PER_CENTROID
    return max(1, math.ceil(max_rows / num_centers))


def kmeans_rows_note(num_centers: int, num_rows: int, points_per_centroid: int | None) -> str:
    """One line saying which rows a K-means fit trains on: all of them (the paper) or a seeded sample."""
    cap = None if points_per_centroid is None else num_centers * points_per_centroid
    if cap is None or cap >= num_rows:
        return f"K-means (K={num_centers}): training on all {num_rows} rows (the paper's setting)"
    return (
        f"K-means (K={num_centers}): training on a seeded sample of {cap} of {num_rows} rows, for speed "
        f"(set supervision.max_rows>={num_rows} to train on all rows, the paper's setting)"
    )


def _rows_key(
    teacher_id: str, teacher_name: str, module_path: str, pool: bool, dataset: str
) -> dict[str, Any]:
    return {
        "teacher": teacher_id,
        "teacher_name": teacher_name,
        "tap": module_path,
        "pool2x2": bool(pool),
        "dataset": dataset,
        "split": EXTRACT_SPLIT,
        "transform": EXTRACT_TRANSFORM,
    }


def artifact_key(
    spec: Spec,
    teacher_id: str,
    teacher_name: str,
    module_path: str,
    dataset_name: str,
    sup_cfg: SupervisionConfig,
    num_classes: int,
) -> dict[str, Any]:
    """The fields that identify the artefact of ``spec`` (they make its cache key and are checked on load)."""
    key = {
        **_rows_key(teacher_id, teacher_name, module_path, spec.teacher_pool, dataset_name),
        "seed": sup_cfg.seed,
        "kmeans_iters": sup_cfg.kmeans_iters,
    }
    if isinstance(spec, CodebookSpec):
        key.update(
            num_templates=spec.num_templates,
            max_points_per_centroid=kmeans_points_per_centroid(sup_cfg.max_rows, spec.num_templates),
        )
    else:
        key.update(
            subclasses_per_class=spec.subclasses_per_class,
            lda_components=spec.lda_components,
            num_classes=num_classes,
            max_points_per_centroid=None,
        )
    return key


def build_artifact(
    spec: Spec,
    teacher: nn.Module,
    teacher_name: str,
    teacher_checkpoint: str | os.PathLike | None,
    dataset_name: str,
    data_root: str | os.PathLike | None,
    sup_cfg: SupervisionConfig,
    device: str | torch.device | None,
    num_classes: int,
    progress: bool = True,
    teacher_seed: int | None = None,
    num_workers: int = 0,
    train_subset: int | None = None,
    subset_seed: int = 0,
    fit: bool = True,
) -> CachedArtifact:
    """The supervision module of ``spec`` with its metadata, file and ``cached`` flag.

    When the artefact is not cached, the teacher's features at ``spec.teacher_tap`` are extracted over the
    training split of ``dataset_name`` with the test transform (reusing cached rows of the same tap),
    fitted, saved in ``sup_cfg.cache_dir`` and returned (on the CPU). ``teacher_checkpoint`` None
    identifies the teacher as ``untrained:<teacher_name>:<teacher_seed or sup_cfg.seed>`` plus a hash of
    its weights.

    ``train_subset``/``subset_seed``: fit on the same seeded subset of training images the student trains
    on (``data.train_subset`` and the run's seed); the subset is part of the artefact's identity.
    ``fit=False``: only look the artefact up; raise :class:`ArtifactNotCachedError` if it is not cached.
    """
    device = select_device(device)
    seed = sup_cfg.seed if teacher_seed is None else teacher_seed
    teacher_id = teacher_identity(teacher_name, teacher_checkpoint, seed, teacher)
    module_path = resolve_tap(teacher, spec.teacher_tap)
    dataset_id = (
        dataset_name if train_subset is None else f"{dataset_name}[subset={train_subset},seed={subset_seed}]"
    )
    key = artifact_key(spec, teacher_id, teacher_name, module_path, dataset_id, sup_cfg, num_classes)
    cache = ArtifactCache(sup_cfg.cache_dir)
    if not fit:
        found = cache.get(spec.kind, key)
        if found is None:
            raise ArtifactNotCachedError(
                f"no cached {spec.kind} artefact for teacher tap {spec.teacher_tap!r} in {sup_cfg.cache_dir}"
            )
        return found
    rows_fields = _rows_key(teacher_id, teacher_name, module_path, spec.teacher_pool, dataset_id)
    folder = Path(sup_cfg.cache_dir) / "rows" / cache_key(rows_fields)[:24]

    def extract() -> RowFile:
        from letkd.data import create_dataset

        dataset = create_dataset(dataset_name, EXTRACT_SPLIT, root=data_root, transform=EXTRACT_TRANSFORM)
        if train_subset is not None and train_subset < len(dataset):
            from letkd.data import subset

            dataset = subset(dataset, train_subset, subset_seed)
        return extract_rows(
            teacher,
            dataset,
            spec.teacher_tap,  # resolves to module_path; errors name the tap as the config does
            folder,
            pool2x2=spec.teacher_pool,
            batch_size=sup_cfg.extract_batch_size,
            seed=sup_cfg.seed,
            device=device,
            progress=progress,
            num_workers=num_workers,
        )

    def rows() -> RowFile:
        lock = EntryLock(folder.with_name(folder.name + ".lock"), f"feature rows of {spec.teacher_tap!r}")
        with lock:
            assert lock.acquired_at is not None
            report_stale(remove_stale_temps(folder.parent, f".{folder.name}.*.tmp", lock.acquired_at))
            try:
                data = open_checked(folder)
            except CorruptRowsError as exc:
                moved = move_aside(folder)
                warn(f"{exc}; moved it to {moved}, extracting the rows again")
                data = None
            if data is None:
                data = extract()
        check_finite(data, spec.teacher_tap)
        return data

    def fit() -> tuple[nn.Module, dict[str, Any]]:
        data = rows()
        provenance = {
            "tap_name": spec.teacher_tap,
            "num_rows": data.num_rows,
            "dim": data.dim,
            "grid": list(data.grid),
            "num_images": data.meta.get("num_images"),
        }
        if isinstance(spec, CodebookSpec):
            if spec.num_templates > data.num_rows:
                raise NotEnoughRowsError(
                    f"codebook at teacher tap {spec.teacher_tap!r} asks for K={spec.num_templates} templates "
                    f"but the training images give only {data.num_rows} feature rows: set num_templates "
                    f"to at most {data.num_rows} or train on more images (data.train_subset)"
                )
            print(
                kmeans_rows_note(spec.num_templates, data.num_rows, key["max_points_per_centroid"]),
                file=sys.stderr,
                flush=True,
            )
            module = fit_codebook(
                data.rows,
                spec.num_templates,
                iters=sup_cfg.kmeans_iters,
                seed=sup_cfg.seed,
                max_points_per_centroid=key["max_points_per_centroid"],
                progress=progress,
                device=device,
            )
        else:
            module = fit_subclasses(
                data.rows,
                data.labels,
                num_classes,
                spec.subclasses_per_class,
                spec.lda_components,
                iters=sup_cfg.kmeans_iters,
                seed=sup_cfg.seed,
                device=device,
            )
        return module, provenance

    return cache.get_or_fit(spec.kind, key, fit)
