"""From a config to the objects of a run, side by side and in one direction: datasets, teacher,
supervision, student, distiller. :mod:`letkd.pipeline` calls them in order; nothing here calls back up.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from letkd.config import ConfigError, RunConfig
from letkd.engine import distributed as dist_utils
from letkd.methods.base import Distiller, MethodContext, MethodParams, get_method
from letkd.supervision.spec import Spec


def _log(message: str) -> None:
    if dist_utils.current_info().is_main:
        print(message, file=sys.stderr, flush=True)


def build_datasets(cfg: RunConfig) -> tuple[Dataset, Dataset]:
    """Training set (augmented unless ``data.augment`` is false; seeded subset if ``data.train_subset``)
    and test set (first ``data.test_subset`` images if set)."""
    from letkd.data import create_dataset, subset

    d = cfg.data
    kind = "auto" if d.augment else "test"
    train = create_dataset(d.name, "train", root=d.root, transform=kind, download=d.download)
    test = create_dataset(d.name, "test", root=d.root, transform="test", download=d.download)
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


def method_and_params(cfg: RunConfig) -> tuple[type[Distiller], MethodParams]:
    """The config's method class and its validated ``method.params`` (:class:`ConfigError` if invalid)."""
    try:
        cls = get_method(cfg.method.name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None  # str(KeyError) would quote the message
    return cls, cls.parse_params(cfg.method.params)


def supervision_specs(cfg: RunConfig) -> list[Spec]:
    """The teacher-side supervision the config's method needs (empty for most methods)."""
    cls, params = method_and_params(cfg)
    return list(cls.supervision_specs(params))


def build_student(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The student from the zoo; ``model.checkpoint`` (if set) initialises it (strict loading)."""
    from letkd.models import create_model, load_weights

    student = create_model(cfg.model.name, num_classes, **cfg.model.kwargs)
    if cfg.model.checkpoint:
        load_weights(student, cfg.model.checkpoint)
    return student


def build_teacher(cfg: RunConfig, num_classes: int, checkpoint: str | None) -> nn.Module:
    """The teacher from the zoo, loaded strictly from ``checkpoint`` (RepDistiller files accepted), frozen.

    ``checkpoint`` None leaves it randomly initialised (tests only).
    """
    from letkd.models import create_model, load_weights

    tcfg = cfg.teacher
    if tcfg is None:
        raise ConfigError("the config has no teacher section")
    teacher = create_model(tcfg.name, tcfg.num_classes or num_classes, **tcfg.kwargs)
    if checkpoint is not None:
        load_weights(teacher, checkpoint)
    return teacher.eval().requires_grad_(False)


def supervision_artifact(
    cfg: RunConfig,
    spec: Spec,
    teacher: nn.Module,
    checkpoint: str | None,
    num_classes: int,
    device: torch.device | str | None,
    progress: bool,
    fit: bool = True,
) -> Any:
    """The :class:`~letkd.supervision.store.CachedArtifact` of ``spec`` for this run: from the cache, or
    fitted on the run's training subset (``fit=False``: cached only, else
    :class:`~letkd.supervision.artifacts.ArtifactNotCachedError`). The one mapping from a run config to
    the artefact it uses."""
    from letkd.supervision import build_artifact

    if cfg.teacher is None:
        raise ConfigError(
            f"method {cfg.method.name!r} needs teacher supervision but the config has no teacher"
        )
    return build_artifact(
        spec,
        teacher,
        cfg.teacher.name,
        checkpoint,
        cfg.data.name,
        cfg.data.root,
        cfg.supervision,
        device,
        num_classes,
        progress=progress,
        teacher_seed=cfg.seed,
        train_subset=cfg.data.train_subset,
        subset_seed=cfg.seed,
        fit=fit,
    )


def build_supervision(
    cfg: RunConfig,
    specs: Sequence[Spec],
    teacher: nn.Module,
    checkpoint: str | None,
    num_classes: int,
    device: torch.device | str | None,
) -> list[nn.Module]:
    """One supervision module per spec (:func:`supervision_artifact`), on ``device``.

    Under DDP rank 0 fits (or finds) them first; the other ranks then load them from the cache.
    """
    info = dist_utils.current_info()
    modules: list[nn.Module] = []
    for rank_turn in [0, 1] if info.enabled else [0]:
        if (rank_turn == 0) != info.is_main:
            dist_utils.barrier()
            continue
        modules = []
        for spec in specs:
            progress = cfg.train.progress and info.is_main
            found = supervision_artifact(cfg, spec, teacher, checkpoint, num_classes, device, progress)
            state = "cached" if found.cached else "fitted"
            _log(f"supervision: {spec.kind} at teacher {spec.teacher_tap!r} ({state}) → {found.path}")
            modules.append(found.module.to(device))
        if info.enabled and rank_turn == 0:
            dist_utils.barrier()
    return modules


def build_distiller(
    cfg: RunConfig,
    student: nn.Module,
    teacher: nn.Module | None,
    supervision: list[nn.Module] | None,
    num_classes: int,
    input_size: Sequence[int],
    num_train_samples: int | None = None,
) -> Distiller:
    """The config's method around ``student`` (and the frozen ``teacher``): the one MethodContext builder.

    ``input_size`` is one image ``(C, H, W)`` as the datasets deliver it.
    """
    cls, params = method_and_params(cfg)  # a method that needs a teacher refuses None in from_config
    tcfg = cfg.teacher
    context = MethodContext(
        num_classes=num_classes,
        input_size=tuple(input_size),  # type: ignore[arg-type]
        supervision=supervision,
        num_train_samples=num_train_samples,
        compile_teacher=bool(tcfg and tcfg.compile),
        teacher_channels_last=bool(tcfg and tcfg.channels_last),
        fold_teacher_batchnorm=bool(tcfg and tcfg.fold_batchnorm),
    )
    return cls.from_config(student, teacher, params, context)


def input_size_of(dataset: Dataset) -> tuple[int, ...]:
    """``(C, H, W)`` of one image of ``dataset`` as its transform delivers it."""
    sample: Any = dataset[0]
    return tuple(sample[0].shape)


def check_run(cfg: RunConfig, params: MethodParams, num_classes: int) -> None:
    """Cheap checks before the first expensive stage (teacher training or evaluation, supervision fits):
    the student and the teacher build (untrained, on the CPU), the taps of ``params`` resolve on them and the
    paired feature grids fit, at the dataset's input size. Raises :class:`ConfigError` (or the model
    registry's error) naming what is wrong. The global random state is left untouched.
    """
    from letkd.data import dataset_info
    from letkd.methods.features import aligned_grid, resolve_taps, tap_shapes
    from letkd.models import create_model

    info = dataset_info(cfg.data.name)
    input_size = (info.channels, info.image_size, info.image_size)
    with torch.random.fork_rng(devices=[]):
        student = create_model(cfg.model.name, num_classes, **cfg.model.kwargs)
        tcfg = cfg.teacher
        if tcfg is None:
            return
        teacher = create_model(tcfg.name, tcfg.num_classes or num_classes, **tcfg.kwargs)
        for student_taps, teacher_taps, pool in _tap_pairs(params):
            s_paths = resolve_taps(student, student_taps, "student")
            t_paths = resolve_taps(teacher, teacher_taps, "teacher")
            s_shapes = tap_shapes(student, s_paths, input_size, "student")
            t_shapes = tap_shapes(teacher, t_paths, input_size, "teacher")
            if pool is None:
                continue
            (s_shape,), (t_shape,) = s_shapes, t_shapes
            if pool:
                t_shape = (t_shape[0], t_shape[1] // 2, t_shape[2] // 2)
            aligned_grid(student_taps[0], s_shape, teacher_taps[0], t_shape, pool)


def _tap_pairs(params: MethodParams) -> list[tuple[list[str], list[str], bool | None]]:
    """``(student taps, teacher taps, teacher_pool)`` named by a method's params: one per KD layer
    (``layers``: grids must align, ``teacher_pool`` None = no grid check), ``student_tap`` /
    ``teacher_tap`` and ``student_taps`` / ``teacher_taps`` (resolution and shapes only)."""
    pairs: list[tuple[list[str], list[str], bool | None]] = []
    for layer in getattr(params, "layers", None) or []:
        if hasattr(layer, "student_tap") and hasattr(layer, "teacher_tap"):
            pool = bool(getattr(layer, "teacher_pool", False))
            pairs.append(([layer.student_tap], [layer.teacher_tap], pool))
    s_tap, t_tap = getattr(params, "student_tap", None), getattr(params, "teacher_tap", None)
    if isinstance(s_tap, str) and isinstance(t_tap, str):
        pairs.append(([s_tap], [t_tap], None))
    s_list, t_list = getattr(params, "student_taps", None), getattr(params, "teacher_taps", None)
    if s_list or t_list:
        pairs.append((list(s_list or []), list(t_list or []), None))
    return pairs
