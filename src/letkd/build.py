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
    """Training set (augmented unless ``data.augment`` is false, random-crop border ``data.crop_padding``;
    seeded subset if ``data.train_subset``)
    and test set (first ``data.test_subset`` images if set)."""
    from letkd.data import create_dataset, subset

    d = cfg.data
    kind = "auto" if d.augment else "test"
    train = create_dataset(
        d.name, "train", root=d.root, transform=kind, download=d.download, crop_padding=d.crop_padding
    )
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
        info = load_weights(teacher, checkpoint)
        recorded = info.get("meta") if isinstance(info.get("meta"), dict) else info  # letkd's run files
        trained_on = recorded.get("dataset")
        if isinstance(trained_on, str) and trained_on != cfg.data.name:
            _log(
                f"warning: the teacher {checkpoint} was trained on {trained_on}, this run distils on "
                f"{cfg.data.name}: its knowledge may not transfer (is it the right checkpoint?)"
            )
    return teacher.eval().requires_grad_(False)


def supervision_artifacts(
    cfg: RunConfig,
    specs: Sequence[Spec],
    teacher: nn.Module,
    checkpoint: str | None,
    num_classes: int,
    device: torch.device | str | None,
    progress: bool,
    fit: bool = True,
) -> list[Any]:
    """The :class:`~letkd.supervision.store.CachedArtifact` of each spec for this run: from the cache, or
    fitted on the run's training subset in one teacher pass (``fit=False``: cached only, else
    :class:`~letkd.supervision.artifacts.ArtifactNotCachedError`). The one mapping from a run config to
    the artefacts it uses. Under ``torchrun`` every process calls it (the pass is split over them)."""
    from letkd.engine.loaders import auto_num_workers
    from letkd.supervision import build_artifacts

    if cfg.teacher is None:
        raise ConfigError(
            f"method {cfg.method.name!r} needs teacher supervision but the config has no teacher"
        )
    return build_artifacts(
        specs,
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
        num_workers=auto_num_workers() if cfg.data.num_workers is None else cfg.data.num_workers,
        train_subset=cfg.data.train_subset,
        subset_seed=cfg.seed,
        fit=fit,
    )


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
    """:func:`supervision_artifacts` of one spec."""
    return supervision_artifacts(cfg, [spec], teacher, checkpoint, num_classes, device, progress, fit)[0]


def build_supervision(
    cfg: RunConfig,
    specs: Sequence[Spec],
    teacher: nn.Module,
    checkpoint: str | None,
    num_classes: int,
    device: torch.device | str | None,
) -> list[nn.Module]:
    """One supervision module per spec (:func:`supervision_artifacts`), on ``device``.

    Under DDP every rank reads its share of the images in the teacher pass; rank 0 fits the artefacts,
    the other ranks then load them from the cache.
    """
    progress = cfg.train.progress and dist_utils.current_info().is_main
    modules: list[nn.Module] = []
    built = supervision_artifacts(cfg, specs, teacher, checkpoint, num_classes, device, progress)
    for spec, found in zip(specs, built):
        state = "cached" if found.cached else "fitted"
        _log(f"supervision: {spec.kind} at teacher {spec.teacher_tap!r} ({state}) → {found.path}")
        modules.append(found.module.to(device))
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
    paired feature grids fit, at the dataset's input size; the supervision caps leave each fit enough rows.
    Raises :class:`ConfigError` (or the model registry's error) naming what is wrong. The global random
    state is left untouched.
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
        _check_template_memory(cfg, params, teacher, input_size, num_classes)
    _check_sample_caps(cfg, params)


def _check_sample_caps(cfg: RunConfig, params: MethodParams) -> None:
    """Caps of the supervision samples that no fit can use, refused before the teacher pass: a codebook of
    K templates needs at least K rows (``supervision.max_rows``), a class at least ``subclasses_per_class``
    rows (``supervision.rows_per_class``)."""
    sup = cfg.supervision
    for spec in get_method(cfg.method.name).supervision_specs(params):
        if spec.kind == "codebook" and sup.max_rows is not None and sup.max_rows < spec.num_templates:
            raise ConfigError(
                f"supervision.max_rows {sup.max_rows:,} is fewer than the {spec.num_templates:,} templates "
                f"of the codebook at teacher tap {spec.teacher_tap!r}: K-means needs at least one row per "
                "template (faiss warns below 39); raise max_rows or lower num_templates"
            )
        cap, per_class = sup.rows_per_class, getattr(spec, "subclasses_per_class", None)
        if spec.kind == "subclass" and cap is not None and per_class is not None and cap < per_class:
            raise ConfigError(
                f"supervision.rows_per_class {cap:,} is fewer than the {per_class} sub-classes per class at "
                f"teacher tap {spec.teacher_tap!r}: raise rows_per_class or lower subclasses_per_class"
            )


def _check_template_memory(
    cfg: RunConfig, params: MethodParams, teacher, input_size, num_classes: int
) -> None:
    """KD layers (templates, sub-classes) whose supervision or targets would not fit in memory are refused."""
    from letkd.methods.features import resolve_taps, tap_shapes
    from letkd.preflight import check_memory

    layers = [
        layer
        for layer in getattr(params, "layers", None) or []
        if hasattr(layer, "num_templates") or hasattr(layer, "subclasses_per_class")
    ]
    if layers:
        paths = resolve_taps(teacher, [layer.teacher_tap for layer in layers], "teacher")
        check_memory(cfg, layers, tap_shapes(teacher, paths, input_size, "teacher"), num_classes)


def _tap_pairs(params: MethodParams) -> list[tuple[list[str], list[str], bool | None]]:
    """``(student taps, teacher taps, teacher_pool)`` named by a method's params: one per KD layer
    (``layers``: grids must align, ``teacher_pool`` None = no grid check), ``student_tap`` /
    ``teacher_tap`` and ``student_taps`` / ``teacher_taps`` (resolution and shapes only); those of every
    part of a composition (``parts``)."""
    pairs: list[tuple[list[str], list[str], bool | None]] = []
    for part in getattr(params, "parts", None) or []:  # a composition: the taps of each part
        pairs += _tap_pairs(get_method(part.method).parse_params(part.params))
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
