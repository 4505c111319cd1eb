"""What the KD layers of a trained run decide: per-location template choices of student and teacher.

:func:`load_run` rebuilds a run folder's parts without fitting anything: the student with its grafted KD
layers (from ``best.pt`` / ``last.pt``), the teacher (``teacher`` section of ``config.yaml``) and the
supervision modules (from the artefact cache, as ``letkd run`` found them). :func:`inspect_run` then takes
the first test images and, for every KD layer, the student's argmax template per location (from the
layer's pre-BN template scores) next to the teacher's target (argmax of the teacher's target distribution),
plus template usage and student–teacher agreement. Pictures and the page: :mod:`letkd.inspection_plots`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from letkd.config import RunConfig, load_config
from letkd.deploy import apply_graft_spec
from letkd.engine.rundir import BEST, CONFIG, LAST, SUMMARY
from letkd.graft import graft_scores, grafts
from letkd.utils import seed_everything, tqdm_disable

#: methods whose runs have KD layers (template scores in the student, teacher-side targets)
KD_LAYER_METHODS = ("letkd", "quest")
TOPK = 5


class InspectError(RuntimeError):
    """A run folder ``letkd inspect`` cannot look into (one line: what is wrong and what to do)."""


@dataclass
class LayerInfo:
    """One KD layer: ``name`` (of its ``loss_kd_<name>`` metric), taps, kind and number of templates."""

    name: str
    kind: str
    student_tap: str
    teacher_tap: str
    student_path: str
    num_templates: int


@dataclass
class LoadedRun:
    """The rebuilt parts of a run folder (all on ``device``, in eval mode)."""

    run_dir: Path
    checkpoint: Path
    cfg: RunConfig
    student: nn.Module
    teacher: nn.Module
    supervision: list[nn.Module]
    layers: list[LayerInfo]
    device: torch.device


@dataclass
class LayerResult:
    """What one KD layer decides: maps of the pictured images and statistics over the statistics images.

    ``student_argmax`` / ``teacher_argmax``: ``(N, H, W)`` template indices; ``usage_*``: ``(K,)`` counts of
    argmax templates over all locations of the statistics images; ``agreement_top1``: fraction of those
    locations where both argmaxes agree; ``agreement_top5``: fraction where the teacher's argmax is among
    the student's top-5 templates.
    """

    info: LayerInfo
    student_argmax: np.ndarray
    teacher_argmax: np.ndarray
    usage_student: np.ndarray
    usage_teacher: np.ndarray
    agreement_top1: float
    agreement_top5: float
    locations: int


@dataclass
class Inspection:
    """``images``: ``(N, H, W, 3)`` in [0, 1] for display; ``labels``: ``(N,)``; one result per KD layer."""

    images: np.ndarray
    labels: np.ndarray
    stats_images: int
    layers: list[LayerResult] = field(default_factory=list)


# ----------------------------------------------------------------------------- what the methods define
# (the only place that reads letkd.methods: layer params, taps, teacher targets, QuEST's head state)
def _method_layers(cfg: RunConfig) -> list[Any]:
    """The validated ``method.params.layers`` of the run's method (letkd / quest)."""
    from letkd.methods import get_method

    return list(get_method(cfg.method.name).parse_params(cfg.method.params).layers)


def _teacher_targets(
    cfg: RunConfig,
    teacher: nn.Module,
    supervision: list[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
) -> list[torch.Tensor]:
    """The method's teacher targets ``(B, K_i, H_i, W_i)`` per KD layer for ``images (B, 3, H, W)``."""
    from letkd.methods.template_kd import TeacherTargets
    from letkd.teacher import FrozenTeacher

    frozen = FrozenTeacher(teacher)
    targets = TeacherTargets(frozen, _method_layers(cfg), supervision, cfg.method.name)
    return [t.clone() for t in targets(images, labels)]


def _layer_names(cfg: RunConfig) -> list[str]:
    """Per KD layer, the ``<name>`` of its ``loss_kd_<name>`` metric."""
    from letkd.methods.template_kd import loss_names

    return [n.removeprefix("loss_kd_") for n in loss_names(_method_layers(cfg))]


def _student_paths(student: nn.Module, layers: list[Any]) -> list[str]:
    """Module paths of the layers' student taps (where the KD layers are grafted)."""
    from letkd.methods.features import resolve_taps

    return resolve_taps(student, [layer.student_tap for layer in layers], "student")


def _graft_quest_heads(student: nn.Module, paths: list[str], aux_state: dict[str, torch.Tensor]) -> None:
    """Graft QuEST's template heads (kept in the checkpoint's ``distiller`` state as ``heads.<i>.*``) onto
    the student at their taps, so their scores are read like a KD layer's (the features stay unchanged)."""
    for i, path in enumerate(paths):
        prefix = f"heads.{i}."
        state = {k.removeprefix(prefix): v for k, v in aux_state.items() if k.startswith(prefix)}
        if "templates.weight" not in state:
            raise InspectError(f"the checkpoint holds no QuEST head {i} (distiller keys {prefix}*)")
        k, c = state["templates.weight"].shape[:2]
        entry = {"target": path, "kind": "template_head", "channels": c, "num_templates": k}
        (handle,) = apply_graft_spec(student, [entry])
        handle.module.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------- loading
def _pick_checkpoint(run_dir: Path, checkpoint: str | Path | None) -> Path:
    if checkpoint is not None:
        path = Path(checkpoint)
        path = path if path.is_absolute() or path.is_file() else run_dir / path
    else:
        path = run_dir / BEST if (run_dir / BEST).is_file() else run_dir / LAST
    if not path.is_file():
        raise InspectError(f"no checkpoint {path}: is {run_dir} a finished letkd run folder?")
    return path


def _teacher_checkpoint(run_dir: Path, cfg: RunConfig) -> str | None:
    """The teacher checkpoint the run used: as recorded in summary.json, else as the config names it."""
    from letkd.pipeline import teacher_run_dir

    tcfg = cfg.teacher
    assert tcfg is not None
    summary = json.loads((run_dir / SUMMARY).read_text()) if (run_dir / SUMMARY).is_file() else {}
    if summary.get("teacher_checkpoint"):
        path = summary["teacher_checkpoint"]
    elif tcfg.checkpoint:
        path = tcfg.checkpoint
    elif tcfg.train_config:
        path = str(teacher_run_dir(load_config(tcfg.train_config)) / LAST)
    else:
        return None  # an untrained teacher, initialised from the run's seed (as `letkd fit` does)
    if not Path(path).is_file():
        raise InspectError(
            f"teacher checkpoint {path} not found (relative paths are read from the folder the run was "
            "started in: run letkd inspect from there)"
        )
    return str(path)


def load_run(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    data_root: str | None = None,
    checkpoint: str | Path | None = None,
) -> LoadedRun:
    """Rebuild student (grafted, weights loaded), teacher and cached supervision of a run folder.

    Raises :class:`InspectError` for a run without KD layers, a missing file or a supervision artefact that
    is not in the cache (nothing is fitted here: ``letkd fit`` does that).
    """
    from letkd.build import build_teacher, resolve_num_classes, supervision_artifact, supervision_specs
    from letkd.deploy import load_student
    from letkd.engine.state import load_checkpoint
    from letkd.supervision.artifacts import ArtifactNotCachedError

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise InspectError(f"{run_dir} is not a run folder (no {CONFIG}); pass the folder letkd run wrote")
    cfg = load_config(run_dir / CONFIG)
    if data_root is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": data_root})})
    if cfg.method.name not in KD_LAYER_METHODS or cfg.teacher is None:
        raise InspectError(
            f"letkd inspect needs a run with KD layers (method letkd or quest); {run_dir} was trained with "
            f"method {cfg.method.name!r}"
        )
    device = torch.device(device)
    ckpt_path = _pick_checkpoint(run_dir, checkpoint)
    student, _ = load_student(str(ckpt_path), dataset=cfg.data.name)
    layers = _method_layers(cfg)
    paths = _student_paths(student, layers)
    if cfg.method.name == "quest":
        _graft_quest_heads(student, paths, load_checkpoint(ckpt_path).get("distiller") or {})

    num_classes = resolve_num_classes(cfg)
    grafted = grafts(student)
    missing = [p for p in paths if p not in grafted]
    if missing:
        raise InspectError(f"the student in {ckpt_path} has no KD layer at {missing}: not this config's run?")
    _check_templates(ckpt_path, run_dir, layers, paths, grafted, num_classes)
    teacher_ckpt = _teacher_checkpoint(run_dir, cfg)
    if teacher_ckpt is None:
        seed_everything(cfg.seed)
    teacher = build_teacher(cfg, num_classes, teacher_ckpt)
    supervision = []
    for spec in supervision_specs(cfg):
        try:
            found = supervision_artifact(
                cfg, spec, teacher, teacher_ckpt, num_classes, device, progress=False, fit=False
            )
        except ArtifactNotCachedError as exc:
            raise InspectError(f"{exc}: run `letkd fit {run_dir / CONFIG}` first") from None
        supervision.append(found.module.to(device))
    infos = [
        LayerInfo(name, layer.kind, layer.student_tap, layer.teacher_tap, path, grafted[path].num_templates)
        for name, layer, path in zip(_layer_names(cfg), layers, paths)
    ]
    return LoadedRun(
        run_dir, ckpt_path, cfg, student.to(device).eval(), teacher.to(device), supervision, infos, device
    )


def _check_templates(ckpt_path, run_dir, layers, paths, grafted, num_classes: int) -> None:
    """The checkpoint's KD layers must have the templates the run's config (and so its supervision) has."""
    from letkd.methods.template_kd import expected_templates

    for layer, path in zip(layers, paths):
        trained, configured = grafted[path].num_templates, expected_templates(layer, num_classes)
        if trained != configured:
            raise InspectError(
                f"the KD layer at {path} in {ckpt_path} has {trained} templates but {run_dir / CONFIG} asks "
                f"for {configured}: the config was edited after training; restore it (or inspect the run "
                "its config belongs to)"
            )


# --------------------------------------------------------------------------------------------- scores
@torch.no_grad()
def student_scores(run: LoadedRun, images: torch.Tensor) -> list[torch.Tensor]:
    """Pre-BN template scores ``(B, K_i, H_i, W_i)`` of each KD layer for ``images (B, 3, H, W)``."""
    run.student(images.to(run.device))
    found = graft_scores(run.student)
    return [found[layer.student_path] for layer in run.layers]


@torch.no_grad()
def teacher_targets(run: LoadedRun, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Teacher target distributions ``(B, K_i, H_i, W_i)`` of each KD layer."""
    return _teacher_targets(
        run.cfg, run.teacher, run.supervision, images.to(run.device), labels.to(run.device)
    )


def _display_images(images: torch.Tensor, data_name: str) -> np.ndarray:
    """Un-normalise ``(N, C, H, W)`` to ``(N, H, W, 3)`` in [0, 1]."""
    from letkd.data import dataset_info

    info = dataset_info(data_name)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    shown = (images.cpu().float() * std + mean).clamp(0, 1)
    if shown.shape[1] == 1:
        shown = shown.expand(-1, 3, -1, -1)
    return shown.permute(0, 2, 3, 1).numpy()


def inspect_run(
    run: LoadedRun, num_images: int = 8, stats_images: int = 512, progress: bool = False
) -> Inspection:
    """Argmax maps of the first ``num_images`` test images and usage/agreement over the first
    ``stats_images`` (at least ``num_images``) test images of the run's test set (``data.test_subset``)."""
    from letkd.data import create_dataset

    d = run.cfg.data
    test = create_dataset(d.name, "test", root=d.root, transform="test")
    if num_images < 1:
        raise InspectError(f"--images must be at least 1, got {num_images}")
    available = min(len(test), d.test_subset or len(test))  # the run's test set: the first test_subset
    num_images = min(num_images, available)
    stats_images = min(max(stats_images, num_images), available)
    batch = [test[i] for i in range(num_images)]
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch])
    s_maps = [s.argmax(1).cpu().numpy() for s in student_scores(run, images)]
    t_maps = [t.argmax(1).cpu().numpy() for t in teacher_targets(run, images, labels)]

    counts = [_LayerCounts(info.num_templates) for info in run.layers]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(test, range(stats_images)), batch_size=d.test_batch_size, shuffle=False
    )
    for x, y in tqdm(loader, desc="inspect", disable=tqdm_disable(progress), file=sys.stderr):
        for count, s, t in zip(counts, student_scores(run, x), teacher_targets(run, x, y)):
            count.add(s, t)
    result = Inspection(_display_images(images, d.name), labels.numpy(), stats_images)
    for info, s_map, t_map, count in zip(run.layers, s_maps, t_maps, counts):
        result.layers.append(
            LayerResult(
                info,
                s_map,
                t_map,
                count.student.numpy(),
                count.teacher.numpy(),
                count.top1 / max(count.locations, 1),
                count.top5 / max(count.locations, 1),
                count.locations,
            )
        )
    return result


class _LayerCounts:
    """Running template usage and agreement counts of one layer."""

    def __init__(self, k: int) -> None:
        self.student = torch.zeros(k, dtype=torch.long)
        self.teacher = torch.zeros(k, dtype=torch.long)
        self.top1 = self.top5 = self.locations = 0

    def add(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """``scores`` / ``targets``: ``(B, K, H, W)``."""
        k = scores.shape[1]
        s_arg, t_arg = scores.argmax(1).cpu(), targets.argmax(1).cpu()
        top = scores.topk(min(TOPK, k), dim=1).indices.cpu()  # (B, 5, H, W)
        self.student += torch.bincount(s_arg.flatten(), minlength=k)
        self.teacher += torch.bincount(t_arg.flatten(), minlength=k)
        self.top1 += int((s_arg == t_arg).sum())
        self.top5 += int((top == t_arg.unsqueeze(1)).any(1).sum())
        self.locations += t_arg.numel()
