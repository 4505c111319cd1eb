"""The run (``letkd run`` and ``letkd train``): teacher → supervision → student distillation → evaluation.

Every stage reuses what already exists: a teacher checkpoint named by the config (or a teacher trained
once from ``teacher.train_config`` and kept under ``runs/teachers/``), supervision artefacts from the
content-addressed cache (``supervision.cache_dir``), and ``--resume`` for the student run itself. The
objects come from :mod:`letkd.build`; the loop is :class:`letkd.engine.Trainer`. Without a teacher
section the same path trains a model on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from letkd.build import (
    _log,
    build_datasets,
    build_distiller,
    build_student,
    build_supervision,
    build_teacher,
    check_run,
    input_size_of,
    method_and_params,
    resolve_num_classes,
)
from letkd.checkpoints import CheckpointError
from letkd.config import ConfigError, RunConfig, load_config
from letkd.engine import distributed as dist_utils
from letkd.engine.identity import check_resumable
from letkd.engine.loaders import build_test_loader, build_train_loader
from letkd.engine.rundir import (
    CONFIG,
    LAST,
    SUMMARY,
    claim_run_dir,
    default_run_dir,
    latest_run_dir,
    trained_epochs,
)
from letkd.engine.trainer import Trainer, evaluate
from letkd.models import published, torchvision_weights
from letkd.preflight import check_inputs, check_subsets
from letkd.utils import atomic_write_text, seed_everything, sha256_file

TEACHER_RUNS = Path("runs") / "teachers"
#: a teacher whose test accuracy is below this multiple of chance is reported as suspicious
CHANCE_FACTOR = 2.0


def teacher_run_dir(teacher_cfg: RunConfig, base: Path = TEACHER_RUNS) -> Path:
    """Where a teacher trained from ``teacher_cfg`` lives: keyed by the resolved config's content."""
    digest = hashlib.sha256(teacher_cfg.to_yaml().encode()).hexdigest()[:12]
    return base / f"{teacher_cfg.name}-{digest}"


def ensure_teacher_checkpoint(cfg: RunConfig, device: torch.device) -> str | None:
    """The teacher checkpoint path: the configured file, or one trained now (or earlier) from
    ``teacher.train_config``. None when the config asks for an untrained teacher (tests only)."""
    tcfg = cfg.teacher
    assert tcfg is not None
    if published.is_published_name(tcfg.checkpoint):  # crd:<arch>, fetched into the cache
        return str(published.resolve_teacher_checkpoint(tcfg.checkpoint, arch=tcfg.name))
    if torchvision_weights.is_weights_name(tcfg.checkpoint):  # torchvision:IMAGENET1K_V1, hash-checked
        return str(torchvision_weights.resolve_weights_checkpoint(tcfg.checkpoint, tcfg.name))
    if tcfg.checkpoint:
        return _teacher_file(cfg)
    if not tcfg.train_config:
        return None
    teacher_cfg = _teacher_train_config(cfg)
    folder = teacher_run_dir(teacher_cfg)
    summary = folder / SUMMARY
    if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
        _log(f"teacher: reusing {folder / LAST}")
        return str(folder / LAST)
    resume = (folder / LAST).is_file()
    _log(
        f"teacher: training {tcfg.name} from {tcfg.train_config} into {folder}"
        + (" (resuming)" if resume else "")
    )
    try:
        result = _run(teacher_cfg, folder, resume, device, overwrite=not resume)  # our own folder
    except KeyboardInterrupt as exc:
        exc.args = (
            f"while training the teacher in {folder}: run the same command again, and the teacher "
            "continues from its last completed epoch",
        )
        raise
    if result.get("status") != "completed":
        raise RuntimeError(
            f"teacher training did not complete: {result.get('status')} ({result.get('error')})"
        )
    return str(folder / LAST)


def _teacher_file(cfg: RunConfig) -> str:
    """``teacher.checkpoint`` (a file path), checked to exist."""
    assert cfg.teacher is not None and cfg.teacher.checkpoint
    if not Path(cfg.teacher.checkpoint).is_file():
        raise ConfigError(
            f"teacher checkpoint not found: {cfg.teacher.checkpoint} "
            "(set teacher.checkpoint=PATH, or teacher.train_config to train one first)"
        )
    return cfg.teacher.checkpoint


def _teacher_train_config(cfg: RunConfig) -> RunConfig:
    """The config named by ``teacher.train_config``, checked to train the model ``teacher.name`` names."""
    tcfg = cfg.teacher
    assert tcfg is not None and tcfg.train_config
    teacher_cfg = load_config(tcfg.train_config)
    if teacher_cfg.model.name != tcfg.name:
        raise ConfigError(
            f"teacher.train_config {tcfg.train_config} trains {teacher_cfg.model.name!r}, "
            f"but teacher.name is {tcfg.name!r}"
        )
    return teacher_cfg


def check_before_work(cfg: RunConfig) -> tuple[Any, Any, int]:
    """Every cheap check of a run, before anything expensive: the method and its params, a teacher where
    the method needs one, the class count, models, taps and grids (:func:`letkd.build.check_run`), and the
    files the config names (teacher checkpoint or the config that trains it, student checkpoint). Returns
    ``(method class, params, number of classes)``; raises :class:`ConfigError` (or the registry's error)
    naming the problem. ``letkd sweep`` runs it for every run before the first one starts."""
    method_cls, params = method_and_params(cfg)
    if cfg.teacher is None and method_cls.requires_teacher:
        raise ConfigError(f"method {cfg.method.name!r} needs a 'teacher' section in the config")
    num_classes = resolve_num_classes(cfg)
    check_run(cfg, params, num_classes)
    tcfg = cfg.teacher
    if tcfg is not None and not published.is_published_name(tcfg.checkpoint):
        if tcfg.checkpoint:
            _teacher_file(cfg)
        elif tcfg.train_config:
            _teacher_train_config(cfg)
    if cfg.model.checkpoint and not Path(cfg.model.checkpoint).is_file():
        raise ConfigError(f"model.checkpoint not found: {cfg.model.checkpoint}")
    return method_cls, params, num_classes


def teacher_accuracy(
    cfg: RunConfig, teacher: nn.Module, device: torch.device, checkpoint: str | None = None
) -> dict[str, float]:
    """The teacher's top-1/top-5 on the run's test set (printed before distilling, docs/SPEC.md Q15).

    With a checkpoint, the result is cached under ``supervision.cache_dir`` keyed by the checkpoint's
    content and the test set, so runs that share a teacher evaluate it once.
    """
    from letkd.supervision.repair import read_cached_record

    cache_file = None
    if checkpoint is not None:
        key = {
            "checkpoint": sha256_file(checkpoint),
            "model": cfg.teacher.name if cfg.teacher else None,
            "dataset": cfg.data.name,
            "root": cfg.data.root,
            "test_subset": cfg.data.test_subset,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        cache_file = Path(cfg.supervision.cache_dir) / "teacher_accuracy" / f"{digest}.json"
        cached = read_cached_record(cache_file, ("top1", "top5"))  # a damaged file: warned, moved aside
        if cached is not None:
            return cached
    _, test_set = build_datasets(cfg)
    loader = build_test_loader(test_set, cfg, dist_utils.current_info(), device)
    teacher.to(device)
    result = evaluate(teacher, loader, device, cfg.train.amp, progress=cfg.train.progress)
    if cache_file is not None and dist_utils.current_info().is_main:
        atomic_write_text(cache_file, json.dumps(result))
    return result


def _update_summary(run_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    path = run_dir / SUMMARY
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(extra)
    if dist_utils.current_info().is_main:
        atomic_write_text(path, json.dumps(summary, indent=2))
    return summary


def resolve_run_dir(cfg: RunConfig, run_dir: str | Path | None, resume: bool) -> Path:
    """The run folder: ``run_dir`` if given; on resume the newest run of this config; else a new
    ``runs/<name>/<timestamp>``. Decided on rank 0 and shared with the other ranks."""
    if run_dir is not None:
        return Path(run_dir)
    chosen: Path | None = None
    if dist_utils.current_info().is_main:
        chosen = latest_run_dir(cfg) if resume else default_run_dir(cfg)
    chosen = dist_utils.broadcast_object(chosen)
    if chosen is None:
        raise CheckpointError(f"cannot resume: no run of {cfg.name!r} with a last.pt under runs/; pass --out")
    return Path(chosen)


def teacher_stage(
    cfg: RunConfig, num_classes: int, device: torch.device
) -> tuple[nn.Module, str | None, float | None]:
    """The frozen teacher (loaded, or trained first), its checkpoint and its test top-1 (if checked).

    An untrained teacher (no checkpoint; tests only) is initialised from ``cfg.seed``, as ``letkd fit``
    initialises it, so both find the same cached supervision.
    """
    assert cfg.teacher is not None
    checkpoint = ensure_teacher_checkpoint(cfg, device)
    seed_everything(cfg.seed)
    teacher = build_teacher(cfg, num_classes, checkpoint)
    if not cfg.teacher.check_accuracy:
        return teacher, checkpoint, None
    acc = teacher_accuracy(cfg, teacher, device, checkpoint)
    _log(f"teacher {cfg.teacher.name}: test top-1 {acc['top1']:.2f}%  top-5 {acc['top5']:.2f}%")
    published.check_published_accuracy(cfg.teacher.checkpoint, acc["top1"], acc.get("count"))
    if checkpoint is not None and acc["top1"] < CHANCE_FACTOR * 100.0 / num_classes:
        _log(
            f"WARNING: the teacher is close to chance ({100.0 / num_classes:.1f}%): "
            "is this the right checkpoint for this dataset?"
        )
    return teacher, checkpoint, acc["top1"]


def _run(
    cfg: RunConfig, run_dir: str | Path | None, resume: bool, device: torch.device, overwrite: bool = False
) -> dict[str, Any]:
    """One run in an already initialised process (group): build everything, train, summarise.

    The cheap checks run (:func:`check_before_work`) and the run folder is claimed
    (:func:`letkd.engine.rundir.claim_run_dir`) before anything expensive; a resumed folder must hold the
    run asked for (:func:`letkd.engine.identity.check_resumable`).
    """
    if resume and run_dir is not None and not (Path(run_dir) / LAST).is_file():
        resume = _nothing_to_resume(Path(run_dir))
    method_cls, params, num_classes = check_before_work(cfg)
    check_inputs(cfg)  # data, teacher checkpoint, cache folder: every missing one at once
    check_subsets(cfg)
    folder = resolve_run_dir(cfg, run_dir, resume)
    info = dist_utils.current_info()
    claim = claim_run_dir(folder, resume, overwrite) if info.is_main else contextlib.nullcontext(folder)
    with claim:
        if resume and info.is_main:  # only the run asked for is continued
            asked = cfg.model_copy(deep=True)
            asked.model.num_classes = num_classes  # as the run stored it
            check_resumable(folder, asked)
        return _build_and_train(cfg, folder, resume, device, method_cls, params, num_classes)


def _nothing_to_resume(run_dir: Path) -> bool:
    """``--resume`` of a folder without ``last.pt``: a run that never finished an epoch starts from the
    beginning (False: not a resume); anything else is an error saying what to do."""
    if trained_epochs(run_dir) == 0 and (run_dir / CONFIG).is_file():
        _log(f"no epoch of {run_dir} was saved before it stopped: starting it from the beginning")
        return False
    if trained_epochs(run_dir) == 0:
        raise CheckpointError(
            f"cannot resume: no checkpoint at {run_dir / LAST} (no run was started there): run the same "
            "command without --resume"
        )
    raise CheckpointError(
        f"cannot resume: no checkpoint at {run_dir / LAST}, although metrics.jsonl records trained epochs "
        "(was last.pt deleted?): run again with --overwrite (instead of --resume) to start over"
    )


def _build_and_train(
    cfg: RunConfig,
    folder: Path,
    resume: bool,
    device: torch.device,
    method_cls: Any,
    params: Any,
    num_classes: int,
) -> dict[str, Any]:
    """Teacher stage, supervision, datasets, student, distiller, then the trainer, in the claimed folder."""
    cfg = cfg.model_copy(deep=True)
    cfg.model.num_classes = num_classes
    teacher, supervision, teacher_info = None, None, {}
    if cfg.teacher is not None:
        teacher, checkpoint, top1 = teacher_stage(cfg, num_classes, device)
        specs = method_cls.supervision_specs(params)
        if specs:
            try:
                supervision = build_supervision(cfg, specs, teacher, checkpoint, num_classes, device)
            except KeyboardInterrupt as exc:
                exc.args = (
                    "while fitting the supervision; no epoch of this run was trained (the teacher features "
                    "extracted so far are kept): run the same command again, without --resume",
                )
                raise
        teacher = teacher.to(device)
        teacher_info = {"teacher": cfg.teacher.name, "teacher_top1": top1, "teacher_checkpoint": checkpoint}
    if cfg.train.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    seed_everything(cfg.seed, cfg.train.deterministic)
    train_set, test_set = build_datasets(cfg)
    student = build_student(cfg, num_classes)
    distiller = build_distiller(
        cfg, student, teacher, supervision, num_classes, input_size_of(test_set), len(train_set)
    )
    if distiller.needs_sample_indices:  # CRD: each sample's index and its negatives, seeded per epoch
        from letkd.data.contrast import ContrastSampleDataset

        train_set = ContrastSampleDataset(train_set, distiller.num_negatives, cfg.seed)
    info = dist_utils.current_info()
    trainer = Trainer(
        distiller,
        cfg,
        folder,
        build_train_loader(train_set, cfg, info, device),
        build_test_loader(test_set, cfg, info, device),
        device,
    )
    if resume:
        trainer.resume()
    summary = trainer.fit()
    if teacher_info and summary.get("run_dir"):
        summary = _update_summary(Path(summary["run_dir"]), teacher_info)
    return summary


def run_pipeline(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run ``cfg`` end to end and return the run's summary (also in ``summary.json``).

    Under ``torchrun`` the process joins the group (and leaves it at the end if it joined). ``resume``
    continues from ``run_dir/last.pt`` (without ``run_dir``: the newest run of this config) and fails with
    :class:`CheckpointError` if that is missing or corrupt. A fresh run refuses a folder that holds a run
    unless ``overwrite`` (:class:`letkd.engine.rundir.RunFolderError`). Without a ``teacher`` section this
    is plain training (``letkd train``).
    """
    already = torch.distributed.is_available() and torch.distributed.is_initialized()
    deterministic_before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    _, dev = dist_utils.init_distributed(str(device) if device is not None else cfg.train.device)
    try:
        return _run(cfg, run_dir, resume, dev, overwrite)
    finally:
        torch.use_deterministic_algorithms(deterministic_before[0], warn_only=deterministic_before[1])
        if not already:
            dist_utils.cleanup()


def train_from_config(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``letkd train``: :func:`run_pipeline` for a config without a teacher (a model trained on its own)."""
    if cfg.teacher is not None:
        raise ConfigError(
            f"method {cfg.method.name!r} with a teacher is run by 'letkd run' (the full pipeline); "
            "'letkd train' trains a model on its own (method: vanilla)"
        )
    return run_pipeline(cfg, run_dir=run_dir, resume=resume, device=device, overwrite=overwrite)
