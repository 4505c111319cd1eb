"""From a config to a finished run: datasets, loaders, student, distiller, trainer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from letkd.config import ConfigError, RunConfig
from letkd.engine import distributed as dist_utils
from letkd.engine.checkpoint import CheckpointError
from letkd.engine.loaders import build_test_loader, build_train_loader
from letkd.engine.rundir import LAST, default_run_dir, latest_run_dir
from letkd.engine.trainer import Trainer
from letkd.methods.base import Distiller, get_method
from letkd.utils import seed_everything

#: ``factory(cfg, student, device, num_train_samples=N) -> Distiller``: how a pipeline supplies a method's
#: distiller (``N``: size of the training set)
DistillerFactory = Callable[..., Distiller]


def build_datasets(cfg: RunConfig) -> tuple[Dataset, Dataset]:
    """Training set (augmented unless ``data.augment`` is false; seeded subset if ``data.train_subset``)
    and test set (first ``data.test_subset`` images if set)."""
    from letkd.data import create_dataset, subset

    d = cfg.data
    train = create_dataset(d.name, "train", root=d.root, transform="auto" if d.augment else "test")
    test = create_dataset(d.name, "test", root=d.root, transform="test")
    if d.train_subset is not None and d.train_subset < len(train):
        train = subset(train, d.train_subset, cfg.seed)
    if d.test_subset is not None and d.test_subset < len(test):
        test = subset(test, d.test_subset, None)  # the first N
    return train, test


def resolve_num_classes(cfg: RunConfig) -> int:
    """``model.num_classes`` if set, else the dataset's number of classes."""
    if cfg.model.num_classes is not None:
        return cfg.model.num_classes
    from letkd.data import dataset_info

    return int(dataset_info(cfg.data.name).num_classes)


def build_student(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The student from the zoo; ``model.checkpoint`` (if set) initialises it (strict loading)."""
    from letkd.models import create_model, load_weights

    student = create_model(cfg.model.name, num_classes, **cfg.model.kwargs)
    if cfg.model.checkpoint:
        load_weights(student, cfg.model.checkpoint)
    return student


def default_distiller(
    cfg: RunConfig, student: nn.Module, device: torch.device, input_size: tuple[int, int, int] = (3, 32, 32)
) -> Distiller:
    """The config's method built around the student alone (methods that need a teacher are refused)."""
    cls = get_method(cfg.method.name)
    if getattr(cls, "requires_teacher", False) or cfg.teacher is not None:
        raise ConfigError(
            f"method {cfg.method.name!r} with a teacher is run by 'letkd run' (the full pipeline); "
            "'letkd train' trains a model on its own (method: vanilla)"
        )
    if hasattr(cls, "from_config"):
        from letkd.methods.base import MethodContext

        context = MethodContext(
            num_classes=cfg.model.num_classes or 0, input_size=input_size, epochs=cfg.train.epochs
        )
        return cls.from_config(student, None, cfg.method.params, context)
    if cfg.method.params:
        raise ConfigError(f"method {cfg.method.name!r} takes no params, got {sorted(cfg.method.params)}")
    return cls(student)


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


def train_from_config(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    distiller_factory: DistillerFactory | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` end to end and return the summary (``summary.json``).

    Builds the datasets, loaders and student, then the distiller (``distiller_factory(cfg, student, device,
    num_train_samples=len(train_set))``, default :func:`default_distiller`); wraps the training set in
    :class:`letkd.data.contrast.ContrastSampleDataset` when the method ``needs_sample_indices``; and runs
    :class:`Trainer`. Under ``torchrun`` it joins the process group (and leaves it at the end if it joined).
    ``resume`` continues from ``run_dir/last.pt`` and fails with :class:`CheckpointError` if that is missing
    or corrupt.
    """
    if resume and run_dir is not None and not (Path(run_dir) / LAST).is_file():
        raise CheckpointError(f"cannot resume: no checkpoint at {Path(run_dir) / LAST}")
    already = torch.distributed.is_available() and torch.distributed.is_initialized()
    deterministic_before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    info, dev = dist_utils.init_distributed(str(device) if device is not None else cfg.train.device)
    try:
        if cfg.train.deterministic and dev.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        seed_everything(cfg.seed, cfg.train.deterministic)
        cfg = cfg.model_copy(deep=True)
        train_set, test_set = build_datasets(cfg)
        cfg.model.num_classes = resolve_num_classes(cfg)
        student = build_student(cfg, cfg.model.num_classes)
        if distiller_factory is not None:
            distiller = distiller_factory(cfg, student, dev, num_train_samples=len(train_set))
        else:
            distiller = default_distiller(cfg, student, dev, tuple(test_set[0][0].shape))
        if getattr(distiller, "needs_sample_indices", False):
            from letkd.data.contrast import ContrastSampleDataset

            train_set = ContrastSampleDataset(train_set, distiller.num_negatives, cfg.seed)
        folder = resolve_run_dir(cfg, run_dir, resume)
        trainer = Trainer(
            distiller,
            cfg,
            folder,
            build_train_loader(train_set, cfg, info, dev),
            build_test_loader(test_set, cfg, info, dev),
            dev,
        )
        if resume:
            trainer.resume()
        return trainer.fit()
    finally:
        torch.use_deterministic_algorithms(deterministic_before[0], warn_only=deterministic_before[1])
        if not already:
            dist_utils.cleanup()
