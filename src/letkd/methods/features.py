"""Feature reading shared by the methods: teacher taps (no grad, early stop), student taps (with grad),
2×2 pooling of teacher maps, and the start-up shape checks that turn a tap mismatch into a clear message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from letkd.config import ConfigError
from letkd.models import feature_stages, resolve_tap
from letkd.taps import FeatureTaps


def pool2x2(feature: torch.Tensor) -> torch.Tensor:
    """2×2 average pooling, stride 2 (``_downscale`` teachers): ``(B, D, H, W) -> (B, D, H/2, W/2)``."""
    return F.avg_pool2d(feature, kernel_size=2, stride=2)


def resolve_taps(model: nn.Module, taps: Sequence[str], role: str) -> list[str]:
    """Module paths of tap names/paths on ``model``; unknown ones raise :class:`ConfigError`."""
    paths = []
    for tap in taps:
        try:
            paths.append(resolve_tap(model, tap))
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{role} tap {tap!r}: {exc}") from None
    return paths


def default_stage_taps(model: nn.Module, which: Literal["all", "last"], role: str) -> list[str]:
    """Module paths of all feature stages of ``model`` (``"all"``) or of the last one (``"last"``)."""
    try:
        stages = feature_stages(model)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{role}: cannot list the feature stages ({exc}); give taps explicitly") from None
    if not stages:
        raise ConfigError(f"{role} {type(model).__name__} has no known feature stages; give taps explicitly")
    return stages if which == "all" else stages[-1:]


def paired_taps(
    student: nn.Module,
    teacher: nn.Module,
    student_taps: Sequence[str] | None,
    teacher_taps: Sequence[str] | None,
    default: Literal["all", "last"],
    input_size: tuple[int, int, int],
) -> tuple[list[str], list[str]]:
    """Resolve matched lists of student and teacher taps (``None`` = the networks' stages, ``default``).

    Checks with a dummy forward that every tap yields a ``(C, H, W)`` map; raises :class:`ConfigError`
    when the lists differ in length or a tap is unknown.
    """
    s_paths = (
        resolve_taps(student, student_taps, "student")
        if student_taps
        else default_stage_taps(student, default, "student")
    )
    t_paths = (
        resolve_taps(teacher, teacher_taps, "teacher")
        if teacher_taps
        else default_stage_taps(teacher, default, "teacher")
    )
    if len(s_paths) != len(t_paths):
        raise ConfigError(
            f"the student taps {s_paths} and the teacher taps {t_paths} must pair up one to one; "
            "set 'student_taps' and 'teacher_taps' to lists of the same length"
        )
    for model, paths, role in ((student, s_paths, "student"), (teacher, t_paths, "teacher")):
        for path, shape in probe_shapes(model, paths, input_size).items():
            if len(shape) != 3:
                raise ConfigError(f"{role} tap {path!r} outputs {shape}, not a (C, H, W) feature map")
    return s_paths, t_paths


def teacher_logits(teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The teacher's logits ``(B, classes)`` for ``images``, computed under ``torch.inference_mode``.

    Inference mode skips autograd's version and view bookkeeping (the teacher forward of a KD step is
    about 25% faster than under ``no_grad`` on CPU); the result is cloned out of inference mode so that
    losses may save it for the student's backward pass.
    """
    with torch.inference_mode():
        logits = teacher(images)
    return logits.clone()


def teacher_features(
    teacher: nn.Module, paths: Sequence[str], images: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Teacher outputs at ``paths`` (module path -> ``(B, D, H, W)``), under ``torch.inference_mode``.

    The forward stops after the deepest tap; the teacher is expected to be in eval mode. The maps are
    cloned out of inference mode (see :func:`teacher_logits`).
    """
    with (
        torch.inference_mode(),
        FeatureTaps(teacher, list(dict.fromkeys(paths)), stop_after_last=True) as taps,
    ):
        feats = dict(taps(images))
    return {path: f.clone() for path, f in feats.items()}


def student_features(
    student: nn.Module, paths: Sequence[str], images: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the student once: logits ``(B, classes)`` and its outputs at ``paths`` (in the autograd graph)."""
    with FeatureTaps(student, list(dict.fromkeys(paths))) as taps:
        feats = taps(images)
        return taps.output, feats


@torch.no_grad()
def probe_shapes(
    model: nn.Module, paths: Sequence[str], input_size: tuple[int, int, int], batch_size: int = 2
) -> dict[str, tuple[int, ...]]:
    """``(C, H, W)`` at each path for a dummy input of ``input_size`` (eval mode; the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        images = torch.randn(batch_size, *input_size, device=device)
        with FeatureTaps(model, list(dict.fromkeys(paths)), stop_after_last=True) as taps:
            store = taps(images)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot read taps {list(paths)} of {type(model).__name__}: {exc}") from None
    finally:
        model.train(was_training)
    return {p: tuple(store[p].shape[1:]) for p in paths}


def check_same_grid(
    student_tap: str,
    student_shape: tuple[int, ...],
    teacher_tap: str,
    teacher_shape: tuple[int, ...],
    teacher_pool: bool,
) -> None:
    """Raise :class:`ConfigError` unless the student map and the (pooled) teacher map share ``H×W``.

    Shapes are ``(C, H, W)``; ``teacher_shape`` is taken after the optional 2×2 pooling.
    """
    if len(student_shape) != 3 or len(teacher_shape) != 3:
        raise ConfigError(
            f"student tap {student_tap!r} {student_shape} and teacher tap {teacher_tap!r} {teacher_shape} "
            "must both be (C, H, W) feature maps"
        )
    if student_shape[1:] == teacher_shape[1:]:
        return
    pooled = " after 2×2 pooling" if teacher_pool else ""
    msg = (
        f"grid mismatch: student tap {student_tap!r} gives {student_shape} (C, H, W) but teacher tap "
        f"{teacher_tap!r} gives {teacher_shape}{pooled}"
    )
    exactly_twice = teacher_shape[1] == 2 * student_shape[1] and teacher_shape[2] == 2 * student_shape[2]
    if not teacher_pool and exactly_twice:
        msg += "; the teacher grid is exactly 2× the student's: set 'teacher_pool: true' for this layer"
    raise ConfigError(msg)
