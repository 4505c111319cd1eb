"""Build the supervision modules of specs: reuse cached artefacts, or collect rows in one pass, fit, save.

Cache layout under ``SupervisionConfig.cache_dir``: ``<kind>-<hash>.safetensors`` artefacts (see
:mod:`letkd.supervision.store`) and ``rows/<hash>/`` row folders (see :mod:`letkd.supervision.rowcache`):
every row of a tap, or the seeded sample a capped spec needs. The missing folders of all the specs are
filled in one teacher pass (sharded over the processes of a ``torchrun`` launch); process 0 then fits and
saves, the others load. Each fit and each folder holds its entry's lock (``<entry>.lock``); a damaged
entry is moved aside with a warning and made again (see "Cache problems" in docs/supervision.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from letkd.config import SupervisionConfig
from letkd.device import select_device
from letkd.supervision.codebook import fit_codebook, kmeans_points_per_centroid
from letkd.supervision.collect import RowRequest
from letkd.supervision.errors import NotEnoughRowsError
from letkd.supervision.extract import RowFile, check_finite
from letkd.supervision.rowcache import ensure_rows, row_request, sample_fields
from letkd.supervision.shards import Shards
from letkd.supervision.spec import CodebookSpec, Spec
from letkd.supervision.store import ArtifactCache, CachedArtifact
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


def kmeans_rows_note(num_centers: int, data: RowFile, points_per_centroid: int | None) -> str:
    """One line saying which rows a K-means fit trains on: all of them (the paper) or a seeded sample."""
    num_rows, total = data.num_rows, data.total_rows
    cap = None if points_per_centroid is None else num_centers * points_per_centroid
    if data.sampled:
        return (
            f"K-means (K={num_centers}): training on the seeded sample of {num_rows} of {total} rows kept by "
            "the teacher pass (supervision.max_rows)"
        )
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
    """The fields that identify the artefact of ``spec`` (they make its cache key and are checked on load).

    A spec without a cap (``max_rows`` for a codebook, ``rows_per_class`` for sub-classes) has the key
    of earlier letkd versions; a capped one adds ``sample`` (the cap and the storage type).
    """
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
    sample = sample_fields(spec, sup_cfg)
    if sample is not None:
        key["sample"] = sample
    return key


@dataclass
class _Job:
    spec: Spec
    key: dict[str, Any]
    request: RowRequest


def fit_from_rows(
    spec: Spec,
    data: RowFile,
    sup_cfg: SupervisionConfig,
    num_classes: int,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fit ``spec`` on the row folder ``data`` (every row or its sample): ``(module, provenance)``."""
    check_finite(data, spec.teacher_tap)
    provenance = {
        "tap_name": spec.teacher_tap,
        "num_rows": data.num_rows,
        "total_rows": data.total_rows,
        "dim": data.dim,
        "grid": list(data.grid),
        "num_images": data.meta.get("num_images"),
        "rows_dtype": data.dtype,
    }
    if isinstance(spec, CodebookSpec):
        if spec.num_templates > data.num_rows:
            where = "the row sample holds" if data.sampled else "the training images give"
            raise NotEnoughRowsError(
                f"codebook at teacher tap {spec.teacher_tap!r} asks for K={spec.num_templates} templates "
                f"but {where} only {data.num_rows} feature rows: set num_templates "
                f"to at most {data.num_rows} or use more rows (supervision.max_rows, data.train_subset)"
            )
        mppc = kmeans_points_per_centroid(sup_cfg.max_rows, spec.num_templates)
        print(kmeans_rows_note(spec.num_templates, data, mppc), file=sys.stderr, flush=True)
        module = fit_codebook(
            data.rows,
            spec.num_templates,
            iters=sup_cfg.kmeans_iters,
            seed=sup_cfg.seed,
            max_points_per_centroid=mppc,
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
            scatter=data.scatter(),
        )
    return module, provenance


def build_artifacts(
    specs: Sequence[Spec],
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
) -> list[CachedArtifact]:
    """The supervision module of each spec with its metadata, file and ``cached`` flag (in spec order).

    Artefacts not in the cache are fitted: the teacher's features at their taps are read in *one* pass
    over the training split of ``dataset_name`` with the test transform (row folders already cached are
    reused), then each is fitted, saved in ``sup_cfg.cache_dir`` and returned (on the CPU). Under a
    ``torchrun`` process group every process must call this: the pass is split over the processes,
    process 0 fits, the others then load the artefacts. ``teacher_checkpoint`` None identifies the
    teacher as ``untrained:<teacher_name>:<teacher_seed or sup_cfg.seed>`` plus a hash of its weights.

    ``train_subset``/``subset_seed``: fit on the same seeded subset of training images the student trains
    on (``data.train_subset`` and the run's seed); the subset is part of the artefact's identity.
    ``fit=False``: only look the artefacts up; raise :class:`ArtifactNotCachedError` if one is not cached.
    Raises :class:`~letkd.supervision.budget.NotEnoughSpaceError` before the teacher pass when the rows
    would not fit on the disk or in memory.
    """
    device = select_device(device)
    seed = sup_cfg.seed if teacher_seed is None else teacher_seed
    teacher_id = teacher_identity(teacher_name, teacher_checkpoint, seed, teacher)
    dataset_id = (
        dataset_name if train_subset is None else f"{dataset_name}[subset={train_subset},seed={subset_seed}]"
    )
    cache = ArtifactCache(sup_cfg.cache_dir)
    jobs = []
    for spec in specs:
        module_path = resolve_tap(teacher, spec.teacher_tap)
        key = artifact_key(spec, teacher_id, teacher_name, module_path, dataset_id, sup_cfg, num_classes)
        rows_fields = _rows_key(teacher_id, teacher_name, module_path, spec.teacher_pool, dataset_id)
        jobs.append(_Job(spec, key, row_request(spec, module_path, rows_fields, sup_cfg, num_classes)))
    found: list[CachedArtifact | None] = [cache.lookup(job.spec.kind, job.key) for job in jobs]
    if not fit:
        for job, hit in zip(jobs, found):
            if hit is None and cache.get(job.spec.kind, job.key) is None:
                raise ArtifactNotCachedError(
                    f"no cached {job.spec.kind} artefact for teacher tap {job.spec.teacher_tap!r} in "
                    f"{sup_cfg.cache_dir}"
                )
        return [hit or cache.get(job.spec.kind, job.key) for job, hit in zip(jobs, found)]  # type: ignore[misc]
    shards = Shards()
    missing: list[int] = shards.broadcast([i for i, hit in enumerate(found) if hit is None])  # type: ignore[assignment]
    if not missing:
        return found  # type: ignore[return-value]

    def make_dataset():
        from letkd.data import create_dataset

        dataset = create_dataset(dataset_name, EXTRACT_SPLIT, root=data_root, transform=EXTRACT_TRANSFORM)
        if train_subset is not None and train_subset < len(dataset):
            from letkd.data import subset

            dataset = subset(dataset, train_subset, subset_seed)
        return dataset

    with contextlib.ExitStack() as held:
        if shards.is_main:  # artefact locks first, then row locks (in ensure_rows): one order everywhere
            for i in sorted(missing, key=lambda i: str(cache.path_for(jobs[i].spec.kind, jobs[i].key))):
                path = cache.path_for(jobs[i].spec.kind, jobs[i].key)
                lock = held.enter_context(cache.lock(jobs[i].spec.kind, path))
                found[i] = cache.get_locked(jobs[i].spec.kind, jobs[i].key, lock)
        pending: list[int] = shards.broadcast([i for i in missing if found[i] is None])  # type: ignore[assignment]
        needed = [(jobs[i].spec, jobs[i].request) for i in pending]
        if needed:
            ensure_rows(needed, teacher, make_dataset, sup_cfg, device, progress, num_workers, shards)
        if shards.is_main:
            for i in pending:
                job = jobs[i]
                found[i] = cache.fit_locked(
                    job.spec.kind,
                    job.key,
                    lambda job=job: fit_from_rows(
                        job.spec, RowFile.open(job.request.folder), sup_cfg, num_classes, device, progress
                    ),
                )
    shards.barrier()
    if not shards.is_main:
        for i in missing:
            found[i] = cache.get(jobs[i].spec.kind, jobs[i].key)
            if found[i] is None:
                raise ArtifactNotCachedError(
                    f"process {shards.rank} cannot find the {jobs[i].spec.kind} artefact process 0 saved in "
                    f"{sup_cfg.cache_dir}: under torchrun on several machines the cache must be shared"
                )
    return found  # type: ignore[return-value]


def build_artifact(spec: Spec, *args: Any, **kwargs: Any) -> CachedArtifact:
    """:func:`build_artifacts` of one spec (same arguments after ``spec``)."""
    return build_artifacts([spec], *args, **kwargs)[0]
