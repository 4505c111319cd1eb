"""The end-to-end run (``letkd run``): teacher → supervision → student distillation → evaluation.

Every stage reuses what already exists: a teacher checkpoint named by the config (or a teacher trained
once from ``teacher.train_config`` and kept under ``runs/teachers/``), supervision artefacts from the
content-addressed cache (``supervision.cache_dir``), and ``--resume`` for the student run itself.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from letkd.config import ConfigError, RunConfig, load_config
from letkd.engine import distributed as dist_utils
from letkd.engine.build import build_datasets, resolve_num_classes, train_from_config
from letkd.engine.loaders import build_test_loader
from letkd.engine.rundir import LAST, SUMMARY
from letkd.engine.trainer import evaluate
from letkd.methods.base import Distiller, MethodContext, get_method
from letkd.utils import atomic_write_text, sha256_file

TEACHER_RUNS = Path("runs") / "teachers"
#: a teacher whose test accuracy is below this multiple of chance is reported as suspicious
CHANCE_FACTOR = 2.0


def _log(message: str) -> None:
    if dist_utils.current_info().is_main:
        print(message, file=sys.stderr, flush=True)


def teacher_run_dir(teacher_cfg: RunConfig, base: Path = TEACHER_RUNS) -> Path:
    """Where a teacher trained from ``teacher_cfg`` lives: keyed by the resolved config's content."""
    digest = hashlib.sha256(teacher_cfg.to_yaml().encode()).hexdigest()[:12]
    return base / f"{teacher_cfg.name}-{digest}"


def ensure_teacher_checkpoint(cfg: RunConfig, device: str | None) -> str | None:
    """The teacher checkpoint path: the configured file, or one trained now (or earlier) from
    ``teacher.train_config``. None when the config asks for an untrained teacher (tests only)."""
    tcfg = cfg.teacher
    assert tcfg is not None
    if tcfg.checkpoint:
        if not Path(tcfg.checkpoint).is_file():
            raise ConfigError(
                f"teacher checkpoint not found: {tcfg.checkpoint} "
                "(set teacher.checkpoint=PATH, or teacher.train_config to train one first)"
            )
        return tcfg.checkpoint
    if not tcfg.train_config:
        return None
    teacher_cfg = load_config(tcfg.train_config)
    if teacher_cfg.model.name != tcfg.name:
        raise ConfigError(
            f"teacher.train_config {tcfg.train_config} trains {teacher_cfg.model.name!r}, "
            f"but teacher.name is {tcfg.name!r}"
        )
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
    result = train_from_config(teacher_cfg, run_dir=folder, resume=resume, device=device)
    if result.get("status") != "completed":
        raise RuntimeError(
            f"teacher training did not complete: {result.get('status')} ({result.get('error')})"
        )
    return str(folder / LAST)


def build_teacher(cfg: RunConfig, num_classes: int, checkpoint: str | None) -> nn.Module:
    """The teacher from the zoo, loaded strictly from ``checkpoint`` (RepDistiller files accepted)."""
    from letkd.models import create_model, load_weights

    tcfg = cfg.teacher
    assert tcfg is not None
    teacher = create_model(tcfg.name, tcfg.num_classes or num_classes, **tcfg.kwargs)
    if checkpoint is not None:
        load_weights(teacher, checkpoint)
    return teacher.eval().requires_grad_(False)


def teacher_accuracy(
    cfg: RunConfig, teacher: nn.Module, device: torch.device, checkpoint: str | None = None
) -> dict[str, float]:
    """The teacher's top-1/top-5 on the run's test set (printed before distilling, docs/SPEC.md Q15).

    With a checkpoint, the result is cached under ``supervision.cache_dir`` keyed by the checkpoint's
    content and the test set, so runs that share a teacher evaluate it once.
    """
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
        if cache_file.is_file():
            return json.loads(cache_file.read_text())
    _, test_set = build_datasets(cfg)
    loader = build_test_loader(test_set, cfg, dist_utils.current_info(), device)
    teacher.to(device)
    result = evaluate(teacher, loader, device, cfg.train.amp, progress=cfg.train.progress)
    if cache_file is not None and dist_utils.current_info().is_main:
        atomic_write_text(cache_file, json.dumps(result))
    return result


def build_run_artifact(
    cfg: RunConfig,
    spec: Any,
    teacher: nn.Module,
    checkpoint: str | None,
    num_classes: int,
    device: torch.device | str | None,
    progress: bool,
) -> Any:
    """The supervision artefact of ``spec`` for this run (cached or fitted on the run's training subset)."""
    from letkd.supervision import build_artifact

    assert cfg.teacher is not None
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
    )


def build_all_supervision(
    cfg: RunConfig, teacher: nn.Module, checkpoint: str | None, num_classes: int, device: torch.device
) -> list[nn.Module | None] | None:
    """One supervision module per entry of ``method.params.layers`` (None for methods without layers).

    Built on rank 0 first (fit or cache), then loaded from the cache by the other ranks.
    """
    from letkd.supervision import specs_from_config

    specs = specs_from_config(cfg)
    if not specs:
        return None
    assert cfg.teacher is not None
    info = dist_utils.current_info()
    modules: list[nn.Module | None] = []
    for rank_turn in [0, 1] if info.enabled else [0]:
        if (rank_turn == 0) != info.is_main:
            dist_utils.barrier()
            continue
        modules = []
        for spec in specs:
            found = build_run_artifact(
                cfg, spec, teacher, checkpoint, num_classes, device, cfg.train.progress and info.is_main
            )
            state = "cached" if found.cached else "fitted"
            _log(f"supervision: {spec.kind} at teacher {spec.teacher_tap!r} ({state}) → {found.path}")
            modules.append(found.module.to(device))
        if info.enabled and rank_turn == 0:
            dist_utils.barrier()
    return modules


def _update_summary(run_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    path = run_dir / SUMMARY
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(extra)
    if dist_utils.current_info().is_main:
        atomic_write_text(path, json.dumps(summary, indent=2))
    return summary


def run_pipeline(
    cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False, device: str | None = None
) -> dict[str, Any]:
    """Run ``cfg`` end to end and return the student run's summary (also in ``summary.json``).

    Without a ``teacher`` section this is plain training (``letkd train``).
    """
    method_cls = get_method(cfg.method.name)
    if cfg.teacher is None:
        if method_cls.requires_teacher:
            raise ConfigError(f"method {cfg.method.name!r} needs a 'teacher' section in the config")
        return train_from_config(cfg, run_dir=run_dir, resume=resume, device=device)
    method_cls.parse_params(cfg.method.params)  # fail on bad params before any expensive stage
    already = torch.distributed.is_available() and torch.distributed.is_initialized()
    _, dev = dist_utils.init_distributed(device or cfg.train.device)
    try:
        num_classes = resolve_num_classes(cfg)
        checkpoint = ensure_teacher_checkpoint(cfg, device)
        teacher = build_teacher(cfg, num_classes, checkpoint)
        teacher_top1 = None
        if cfg.teacher.check_accuracy:
            acc = teacher_accuracy(cfg, teacher, dev, checkpoint)
            teacher_top1 = acc["top1"]
            _log(f"teacher {cfg.teacher.name}: test top-1 {acc['top1']:.2f}%  top-5 {acc['top5']:.2f}%")
            if checkpoint is not None and acc["top1"] < CHANCE_FACTOR * 100.0 / num_classes:
                _log(
                    f"WARNING: the teacher is close to chance ({100.0 / num_classes:.1f}%): "
                    "is this the right checkpoint for this dataset?"
                )
        supervision = build_all_supervision(cfg, teacher, checkpoint, num_classes, dev)

        def factory(
            run_cfg: RunConfig,
            student: nn.Module,
            _device: torch.device,
            num_train_samples: int | None = None,
        ) -> Distiller:
            from letkd.data import dataset_info

            size = dataset_info(run_cfg.data.name).image_size
            input_size = (
                tuple(size) if isinstance(size, (tuple, list)) and len(size) == 3 else (3, size, size)
            )
            context = MethodContext(
                num_classes=num_classes,
                input_size=input_size,
                epochs=run_cfg.train.epochs,
                supervision=supervision,
                compile_teacher=run_cfg.teacher.compile if run_cfg.teacher else False,
                teacher_channels_last=run_cfg.teacher.channels_last if run_cfg.teacher else False,
                fold_teacher_batchnorm=run_cfg.teacher.fold_batchnorm if run_cfg.teacher else False,
                num_train_samples=num_train_samples,
            )
            return method_cls.from_config(student, teacher.to(_device), run_cfg.method.params, context)

        summary = train_from_config(
            cfg, run_dir=run_dir, resume=resume, device=device, distiller_factory=factory
        )
        extra = {"teacher": cfg.teacher.name, "teacher_top1": teacher_top1, "teacher_checkpoint": checkpoint}
        if summary.get("run_dir"):
            summary = _update_summary(Path(summary["run_dir"]), extra)
        return summary
    finally:
        if not already:
            dist_utils.cleanup()
