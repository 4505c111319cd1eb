"""SimKD — "Knowledge Distillation with the Reused Teacher Classifier" (Chen, Mei, Zhang, Wang, Wang &
Feng, CVPR 2022).

A projector (conv1×1 → BN → ReLU → conv3×3 → BN → ReLU → conv1×1 → BN → ReLU, no biases, middle width
``C_t / factor``) maps the student's last feature map to the teacher's width; loss
``weight · MSE(projected, f_t) + ce_weight · CE``. The student's predictions are the *teacher's* frozen
classifier on the pooled projection, in training and at test time (:meth:`SimKD.forward_test`); the
student's own classifier is unused. If the student's grid is larger it is pooled to the teacher's,
otherwise the teacher map is pooled to the student's.

Defaults (SimKD ``scripts/run_distill.sh``: ``--distill simkd -c 0 -d 0 -b 1``; ``SimKD(factor=2)``):
``weight 1``, ``ce_weight 0``, ``factor 2``, taps = the last feature stage of each network: what SimKD's
``train_student.py`` reads as ``feat_s[-2]`` / ``feat_t[-2]`` of RepDistiller's models (the map before the
head's pooling *and* before any head layer: ShuffleV2 ``layer3`` (464 channels, not ``conv2``'s 1024),
MobileNetV2 ``blocks.6`` (160, not ``conv2``'s 1280), WRN ``block3`` (before the final BN-ReLU), the ResNets'
last ``layer``, ShuffleV1 ``layer3``).

The deployed student is student backbone + projector + the teacher's classifier.
:meth:`extra_parameters` counts the projector (the reused classifier replaces the student's own).
Evaluation inside the run uses this head. The run's checkpoint holds all three (the distiller's state);
a student exported on its own would lack the projector and the reused classifier, so ``letkd export`` and
``letkd eval`` refuse ``simkd`` checkpoints (:attr:`standalone_student` is false) until the export format
can carry them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from letkd.config import ConfigError
from letkd.methods.base import register_method
from letkd.methods.pairs import FeaturePairDistiller, PairParams, classifier_path


def projector(student_channels: int, teacher_channels: int, factor: int) -> nn.Sequential:
    """SimKD's ``transfer``: ``(B, C_s, H, W) -> (B, C_t, H, W)`` (keys ``0, 1, 3, 4, 6, 7``)."""
    mid = teacher_channels // factor
    return nn.Sequential(
        nn.Conv2d(student_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, teacher_channels, 1, bias=False), nn.BatchNorm2d(teacher_channels),
        nn.ReLU(inplace=True),
    )  # fmt: skip


@register_method("simkd")
class SimKD(FeaturePairDistiller):
    """Projected student features fed to the reused, frozen teacher classifier."""

    default_taps = "last"  # RepDistiller's feat[-2]: the last stage's output (see the module docs)
    find_unused_parameters = True  # the student's own classifier gets no gradient
    standalone_student = False  # deployed with the projector and the teacher's classifier

    class Params(PairParams):
        """``method.params`` of ``simkd``; ``None`` taps = the last feature stage of each network."""

        weight: float = Field(1.0, ge=0)
        ce_weight: float = Field(0.0, ge=0)
        factor: int = Field(2, ge=1)

    def __init__(self, student, teacher, params=None, context=None):
        super().__init__(student, teacher, params, context)
        self.classifier_path = classifier_path(self.teacher.module, "teacher", "simkd")
        width = self.teacher.module.get_submodule(self.classifier_path).in_features
        if width != self.teacher_shapes[0][0]:
            raise ConfigError(
                f"simkd: the teacher classifier {self.classifier_path!r} takes {width} features but the "
                f"teacher tap {self.teacher_paths[0]!r} has {self.teacher_shapes[0][0]} channels"
            )

    def check_pairs(self, student_shapes, teacher_shapes):
        if len(student_shapes) != 1:
            raise ConfigError("simkd: takes one student tap and one teacher tap (the last feature maps)")

    def make_connector(self, i, student_shape, teacher_shape):
        """The projector to the teacher's width."""
        return projector(student_shape[0], teacher_shape[0], self.params.factor)

    def align(self, i, s, t):
        """Student grid larger: pool it to the teacher's; otherwise pool the teacher to the student's."""
        s_h, t_h = s.shape[2], t.shape[2]
        if s_h > t_h:
            return F.adaptive_avg_pool2d(s, (t_h, t_h)), t
        return s, F.adaptive_avg_pool2d(t, (s_h, s_h))

    def head(self, student_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected map ``(B, C_t, h, w)`` and logits ``(B, classes)`` from the student's tapped map."""
        t_h = self.teacher_shapes[0][1]
        if student_map.shape[2] > t_h:
            student_map = F.adaptive_avg_pool2d(student_map, (t_h, t_h))
        projected = self.connectors[0](student_map)
        return projected, self.teacher.module.get_submodule(self.classifier_path)(projected.mean((2, 3)))

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """Logits of the reused classifier ``(B, classes)`` and ``{loss_ce, loss_kd}``."""
        _, (s,) = self.student_outputs(images)
        (t,) = self.teacher_targets(images)
        s, t = self.align(0, s, t)
        projected, logits = self.head(s)
        p = self.params
        return logits, {
            "loss_ce": p.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": p.weight * F.mse_loss(projected, t),
        }

    def forward_test(self, images: torch.Tensor) -> torch.Tensor:
        """The deployed SimKD student: backbone, projector, teacher classifier."""
        _, (s,) = self.student_outputs(images)
        return self.head(s)[1]

    def extra_parameters(self) -> int:
        """Parameters of the projector."""
        return sum(p.numel() for p in self.connectors[0].parameters())
