"""Feature helpers shared by the methods: tap lists as config errors, student taps (with grad), 2×2 pooling
of teacher maps, the grid-alignment rule, and the start-up shape checks that turn a tap mismatch into a clear
message.

Teacher features are read through :class:`letkd.teacher.FrozenTeacher`; taps are resolved by
:func:`letkd.taps.resolve_tap` and shapes probed by :func:`letkd.taps.probe_shapes` — the helpers here
only turn their errors into :class:`~letkd.config.ConfigError` naming the role (student or teacher).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from letkd.config import ConfigError
from letkd.models import TapInferenceError, feature_stages
from letkd.models.tap_names import preact_stages
from letkd.taps import FeatureTaps, TapError, UnknownTapError, probe_shapes, resolve_tap
from letkd.teacher import FrozenTeacher


def pool2x2(feature: torch.Tensor) -> torch.Tensor:
    """2×2 average pooling, stride 2 (``_downscale`` teachers): ``(B, D, H, W) -> (B, D, H/2, W/2)``."""
    return F.avg_pool2d(feature, kernel_size=2, stride=2)


def _network(model: nn.Module | FrozenTeacher) -> nn.Module:
    return model.module if isinstance(model, FrozenTeacher) else model


def resolve_taps(model: nn.Module | FrozenTeacher, taps: Sequence[str], role: str) -> list[str]:
    """Module paths of tap names/paths; on a :class:`FrozenTeacher` they are declared as its taps.

    Unknown taps raise :class:`ConfigError` naming ``role``.
    """
    paths = []
    for tap in taps:
        try:
            paths += model.add_taps([tap]) if isinstance(model, FrozenTeacher) else [resolve_tap(model, tap)]
        except UnknownTapError as exc:
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


def default_preact_taps(model: nn.Module, role: str, method: str) -> list[str]:
    """Module paths of ``model``'s pre-activation stage points (:func:`letkd.models.tap_names.preact_stages`);
    :class:`ConfigError` naming the method and role where the model declares none."""
    try:
        return preact_stages(_network(model))
    except TapInferenceError as exc:
        raise ConfigError(f"{method}: {role}: {exc} ({role}_taps)") from None


def pair_levels(
    student_taps: Sequence[str], teacher_taps: Sequence[str], defaults: bool, method: str
) -> tuple[list[str], list[str]]:
    """Student and teacher taps paired level by level. With ``defaults`` (a list came from the network's
    stages) only the deepest levels both have are kept, as mdistiller pairs unequal stage lists; given
    lists must have the same length. :class:`ConfigError` when nothing pairs."""
    if defaults:
        n = min(len(student_taps), len(teacher_taps))
        student_taps, teacher_taps = (
            student_taps[len(student_taps) - n :],
            teacher_taps[len(teacher_taps) - n :],
        )
    if len(student_taps) != len(teacher_taps) or not student_taps:
        raise ConfigError(
            f"{method}: student_taps {list(student_taps)} and teacher_taps {list(teacher_taps)} must pair up "
            "one to one"
        )
    return list(student_taps), list(teacher_taps)


def tap_shapes(
    model: nn.Module | FrozenTeacher, paths: Sequence[str], input_size: Sequence[int], role: str
) -> list[tuple[int, int, int]]:
    """``(C, H, W)`` at each path (one dummy forward); :class:`ConfigError` if a tap is not such a map."""
    network = _network(model)
    try:
        shapes = probe_shapes(network, paths, input_size)
    except (TapError, UnknownTapError) as exc:
        raise ConfigError(f"{role}: {exc}") from None
    for path in paths:
        if len(shapes[path]) != 3:
            raise ConfigError(f"{role} tap {path!r} outputs {shapes[path]}, not a (C, H, W) feature map")
    return [shapes[p] for p in paths]  # type: ignore[misc]


def paired_taps(
    student: nn.Module,
    teacher: nn.Module | FrozenTeacher,
    student_taps: Sequence[str] | None,
    teacher_taps: Sequence[str] | None,
    default: Literal["all", "last"],
    input_size: Sequence[int],
) -> tuple[list[str], list[str]]:
    """Resolve matched lists of student and teacher taps (``None`` = the networks' stages, ``default``).

    On a :class:`FrozenTeacher` the teacher's paths are declared as its taps. Checks with a dummy forward
    that every tap yields a ``(C, H, W)`` map; raises :class:`ConfigError` when the lists differ in length
    or a tap is unknown.
    """
    s_taps = student_taps or default_stage_taps(student, default, "student")
    t_taps = teacher_taps or default_stage_taps(_network(teacher), default, "teacher")
    if len(s_taps) != len(t_taps):
        raise ConfigError(
            f"the student taps {list(s_taps)} and the teacher taps {list(t_taps)} must pair up one to one; "
            "set 'student_taps' and 'teacher_taps' to lists of the same length"
        )
    s_paths = resolve_taps(student, s_taps, "student")
    t_paths = resolve_taps(teacher, t_taps, "teacher")
    tap_shapes(student, s_paths, input_size, "student")
    tap_shapes(teacher, t_paths, input_size, "teacher")
    return s_paths, t_paths


def student_features(
    student: nn.Module, paths: Sequence[str], images: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the student once: logits ``(B, classes)`` and its outputs at ``paths`` (in the autograd graph)."""
    with FeatureTaps(student, list(dict.fromkeys(paths))) as taps:
        feats = taps(images)
        return taps.output, feats


class GridAlignmentError(ConfigError):
    """A student and a teacher grid that pooling the finer one cannot align (see :func:`aligned_grid`)."""


def aligned_grid(
    student_tap: str,
    student_shape: tuple[int, ...],
    teacher_tap: str,
    teacher_shape: tuple[int, ...],
    teacher_pool: bool,
) -> tuple[int, int]:
    """The common ``(H, W)`` of a student map and a (pooled) teacher map: the coarser of the two grids.

    The rule: when the grids differ, the finer one is average-pooled to the coarser
    (:func:`pool_to_grid`), e.g. a 16×16 teacher map for an 8×8 student, or a ViT's 8×8 tokens for a 4×4
    CNN map. It applies when one grid is finer in both dimensions by an integer factor (each coarse
    location then averages a whole block); otherwise :class:`GridAlignmentError`. Shapes are
    ``(C, H, W)``; ``teacher_shape`` is taken after the optional 2×2 ``teacher_pool``.
    """
    if len(student_shape) != 3 or len(teacher_shape) != 3:
        raise ConfigError(
            f"student tap {student_tap!r} {student_shape} and teacher tap {teacher_tap!r} {teacher_shape} "
            "must both be (C, H, W) feature maps"
        )
    (sh, sw), (th, tw) = student_shape[1:], teacher_shape[1:]
    student_finer = sh >= th and sw >= tw and sh % th == 0 and sw % tw == 0
    teacher_finer = th >= sh and tw >= sw and th % sh == 0 and tw % sw == 0
    if not (student_finer or teacher_finer):
        pooled = " after 2×2 pooling" if teacher_pool else ""
        raise GridAlignmentError(
            f"grid mismatch: student tap {student_tap!r} gives {student_shape} (C, H, W) but teacher tap "
            f"{teacher_tap!r} gives {teacher_shape}{pooled}; grids align only when one is an integer "
            "multiple of the other in both H and W (the finer is average-pooled); choose other taps or sizes"
        )
    return (min(sh, th), min(sw, tw))


def pool_to_grid(feature: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C, *grid)`` by adaptive average pooling; unchanged when already on ``grid``."""
    if tuple(feature.shape[-2:]) == tuple(grid):
        return feature
    return F.adaptive_avg_pool2d(feature, tuple(grid))
