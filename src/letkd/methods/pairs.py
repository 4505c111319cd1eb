"""A loss between named student/teacher feature pairs, possibly through a learned connector.

:class:`FeaturePairDistiller` is the common base of the feature methods (FitNet, AT, SP, VID, AB, FSP, NST,
PKT, RKD, CRD, SimKD). A subclass says which taps it pairs (``student_taps`` / ``teacher_taps`` params,
``None`` = the networks' stages, :attr:`FeaturePairDistiller.default_taps`), how each pair is compared
(:meth:`~FeaturePairDistiller.pair_loss`, or :meth:`~FeaturePairDistiller.feature_loss` for losses that
combine several maps, like FSP), an optional connector per pair
(:meth:`~FeaturePairDistiller.make_connector`) and per-pair weights
(:meth:`~FeaturePairDistiller.make_pair_weights`). The loss is
``ce_weight · CE + weight · Σ_i w_i · pair_loss(i, connector_i(s_i), t_i)``.

Student features are read through :mod:`letkd.methods.features`; the teacher is a
:class:`~letkd.teacher.FrozenTeacher` whose taps (the pairs' teacher paths) are declared once here and read,
with the logits when :attr:`FeaturePairDistiller.reads_teacher_logits`, only in
:meth:`FeaturePairDistiller.teacher_targets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from letkd.config import ConfigError
from letkd.methods.base import Distiller, MethodContext, MethodParams
from letkd.methods.features import paired_taps, resolve_taps, student_features, tap_shapes

Shape = tuple[int, ...]


class PairParams(MethodParams):
    """Params shared by the feature-pair methods; ``None`` taps = the default stages of the method."""

    student_taps: list[str] | None = None
    teacher_taps: list[str] | None = None
    weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)


def global_pool(feature: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C)`` global average (a ``(B, C)`` input is returned as is)."""
    return feature.mean((2, 3)) if feature.dim() == 4 else feature


class FeaturePairDistiller(Distiller):
    """Base of the methods that compare student and teacher features pair by pair (see module docs)."""

    requires_teacher = True
    Params: ClassVar[type[MethodParams]] = PairParams
    #: the taps paired when the params give none: all stages, the last stage, or the ``penultimate`` tap
    #: (the map the classifier pools, RepDistiller's ``feat[-1]`` before pooling)
    default_taps: ClassVar[Literal["all", "last", "penultimate"]] = "all"
    #: whether :meth:`teacher_targets` also returns the teacher's logits (one whole teacher forward)
    reads_teacher_logits: ClassVar[bool] = False

    def __init__(self, student, teacher, params=None, context: MethodContext | None = None):
        super().__init__(student, teacher, params, context)
        params, network = self.params, self.teacher.module
        self.input_size = self.context.input_size
        self.student_paths, self.teacher_paths = self.select_taps(student, network, params, self.input_size)
        self.student_shapes: list[Shape] = tap_shapes(student, self.student_paths, self.input_size, "student")
        self.teacher_shapes: list[Shape] = tap_shapes(network, self.teacher_paths, self.input_size, "teacher")
        self.check_pairs(self.student_shapes, self.teacher_shapes)
        connectors = [
            self.make_connector(i, s, t)
            for i, (s, t) in enumerate(zip(self.student_shapes, self.teacher_shapes))
        ]
        self.connectors = nn.ModuleList(c if c is not None else nn.Identity() for c in connectors)
        self.pair_weights = list(self.make_pair_weights(len(self.student_paths)))
        self.teacher.add_taps(self.teacher_paths)

    # -- what a method defines ---------------------------------------------------------------------------

    def select_taps(self, student, teacher, params, input_size) -> tuple[list[str], list[str]]:
        """Module paths of the paired student and teacher taps (default: the params' lists or the stages);
        ``teacher`` is the frozen teacher's network (the base declares the returned paths as its taps)."""
        if self.default_taps == "penultimate":
            s_taps = params.student_taps or ["penultimate"]
            t_taps = params.teacher_taps or ["penultimate"]
            return paired_taps(student, teacher, s_taps, t_taps, "last", input_size)
        return paired_taps(
            student, teacher, params.student_taps, params.teacher_taps, self.default_taps, input_size
        )

    def check_pairs(self, student_shapes: list[Shape], teacher_shapes: list[Shape]) -> None:
        """Raise :class:`ConfigError` when the tapped shapes cannot be compared (default: accept)."""

    def make_connector(self, i: int, student_shape: Shape, teacher_shape: Shape) -> nn.Module | None:
        """The learned module applied to student map ``i`` before the loss (``None`` = none)."""
        return None

    def make_pair_weights(self, n: int) -> Sequence[float]:
        """Weight of each of the ``n`` pairs in the sum (default 1 each)."""
        return [1.0] * n

    def align(self, i: int, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepare pair ``i`` before its connector (e.g. pool to a common grid); default: unchanged."""
        return s, t

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Scalar loss of pair ``i`` (``s`` after its connector)."""
        raise NotImplementedError

    def feature_loss(self, students: list[torch.Tensor], teachers: list[torch.Tensor]) -> torch.Tensor:
        """``Σ_i w_i · pair_loss(i, connector_i(s_i), t_i)``; override for losses over the whole list."""
        total = students[0].new_zeros(())
        for i, (s, t) in enumerate(zip(students, teachers)):
            s, t = self.align(i, s, t)
            total = total + self.pair_weights[i] * self.pair_loss(i, self.connectors[i](s), t)
        return total

    # -- reading features ----------------------------------------------------------------------------------

    def student_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Student logits ``(B, classes)`` and its maps at :attr:`student_paths` (in the autograd graph)."""
        logits, feats = student_features(self.student, self.student_paths, images)
        return logits, [feats[p] for p in self.student_paths]

    def teacher_targets(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's maps (no gradient), one per pair, then its logits ``(B, classes)`` when
        :attr:`reads_teacher_logits`: the one place the teacher is read."""
        if self.reads_teacher_logits:
            logits, feats = self.teacher.logits_and_features(images)
            return [*(feats[p] for p in self.teacher_paths), logits]
        feats = self.teacher.features(images)
        return [feats[p] for p in self.teacher_paths]

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """``images (B, C, H, W)``, ``labels (B,)`` -> logits ``(B, classes)``, ``{loss_ce, loss_kd}``."""
        logits, students = self.student_outputs(images)
        teachers = self.teacher_targets(images)
        p = self.params
        return logits, {
            "loss_ce": p.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": p.weight * self.feature_loss(students, teachers),
        }

    @classmethod
    def example_params(cls) -> dict:
        """Small settings for tests on digits-sized inputs (defaults unless a method needs less)."""
        return {}


def classifier_path(model: nn.Module, role: str, method: str) -> str:
    """Module path of ``model``'s classifier: its ``classifier`` tap, else its last ``nn.Linear``."""
    try:
        (path,) = resolve_taps(model, ["classifier"], role)
        if isinstance(model.get_submodule(path), nn.Linear):
            return path
    except ConfigError:
        pass
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{method}: the {role} {type(model).__name__} has no nn.Linear classifier to reuse")
    return linears[-1]
