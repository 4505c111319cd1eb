"""Hinton KD — "Distilling the Knowledge in a Neural Network" (Hinton, Vinyals & Dean, 2015).

Loss: ``ce_weight · CE(s, y) + kd_weight · KL(softmax(t/T) ‖ softmax(s/T)) · T²``. Defaults are the
CRD/RepDistiller CIFAR-100 setting (``-r 0.1 -a 0.9``, T = 4): ``ce_weight 0.1``, ``kd_weight 0.9``, ``T 4``.

``logit_stand: true`` is LSKD — "Logit Standardization in Knowledge Distillation" (Sun, Ren, Li, Wang &
Cao, CVPR 2024): both logits are z-scored per sample (:func:`~letkd.methods.losses.standardize_logits`)
before the temperature softmax; the CE term keeps the raw logits. Its authors' CIFAR-100 setting
(``logit-standardization-KD`` ``tools/train.py --logit-stand --base-temp 2 --kd-weight 9``): ``T 2``,
``kd_weight 9``, ``ce_weight 0.1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from letkd.methods.base import Distiller, MethodParams, register_method
from letkd.methods.losses import kd_loss, standardize_logits


def standardized_pair(
    logits_student: torch.Tensor, logits_teacher: torch.Tensor, logit_stand: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two ``(B, classes)`` logits as the KD term sees them: z-scored when ``logit_stand`` (LSKD)."""
    if not logit_stand:
        return logits_student, logits_teacher
    return standardize_logits(logits_student), standardize_logits(logits_teacher)


@register_method("kd")
class KD(Distiller):
    """Logit distillation with a temperature; the teacher runs to its logits under no-grad."""

    requires_teacher = True

    class Params(MethodParams):
        """``method.params`` of ``kd``."""

        temperature: float = Field(4.0, gt=0)
        ce_weight: float = Field(0.1, ge=0)
        kd_weight: float = Field(0.9, ge=0)
        logit_stand: bool = Field(False, description="z-score both logits before the softmax (LSKD)")

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """``images (B, 3, H, W)``, ``labels (B,)`` -> logits ``(B, classes)``, ``{loss_ce, loss_kd}``."""
        logits = self.student(images)
        logits_teacher = self.teacher.logits(images)
        p = self.params
        student, teacher = standardized_pair(logits, logits_teacher, p.logit_stand)
        return logits, {
            "loss_ce": p.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": p.kd_weight * kd_loss(student, teacher, p.temperature),
        }
