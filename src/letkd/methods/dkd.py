"""DKD — "Decoupled Knowledge Distillation" (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

Loss: ``ce_weight · CE + w(e) · (alpha · TCKD + beta · NCKD)`` with temperature T and a linear warm-up
``w(e) = min((e + 1) / warmup, 1)`` for the 0-based epoch ``e`` (mdistiller counts epochs from 1 and uses
``min(epoch / warmup, 1)``: the same weights). Defaults (mdistiller): ``alpha 1``, ``beta 8``, ``T 4``,
``ce_weight 1``, ``warmup 20``. mdistiller's CIFAR-100 configs set ``beta`` per pair: 2 for RN56→RN20 and
RN110→RN32, 6 for the WRN-40-2 pairs, 8 (default) otherwise.

``logit_stand: true`` z-scores both logits before the softmaxes (LSKD, Sun et al., CVPR 2024; see
:mod:`letkd.methods.kd`). Its authors scale ``alpha`` and ``beta`` by their ``--kd-weight`` and set
``T = --base-temp`` (``logit-standardization-KD`` ``tools/train.py``), e.g. ``alpha 9``, ``beta 72``, ``T 2``
for RN32x4→RN8x4.

The trainer must call :meth:`set_epoch` before each epoch (see :class:`letkd.methods.base.Distiller`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from letkd.methods.base import Distiller, MethodParams, register_method
from letkd.methods.kd import standardized_pair
from letkd.methods.losses import dkd_loss


def linear_warmup(epoch: int, warmup: int) -> float:
    """``min((epoch + 1) / warmup, 1)`` for the 0-based ``epoch`` (1 when ``warmup`` is 0): the weight of a
    loss warmed up linearly over ``warmup`` epochs, as mdistiller's ``min(epoch / warmup, 1)`` (1-based)."""
    return 1.0 if warmup == 0 else min((epoch + 1) / warmup, 1.0)


@register_method("dkd")
class DKD(Distiller):
    """Decoupled target / non-target logit distillation with a warm-up of the KD term."""

    requires_teacher = True

    class Params(MethodParams):
        """``method.params`` of ``dkd``."""

        alpha: float = Field(1.0, ge=0)
        beta: float = Field(8.0, ge=0)
        temperature: float = Field(4.0, gt=0)
        ce_weight: float = Field(1.0, ge=0)
        warmup: int = Field(20, ge=0, description="epochs of linear warm-up of the KD term (0 = none)")
        logit_stand: bool = Field(False, description="z-score both logits before the softmaxes (LSKD)")

    def warmup_factor(self) -> float:
        """Weight of the KD term at the current epoch: ``min((epoch + 1) / warmup, 1)``."""
        return linear_warmup(self.epoch, self.params.warmup)

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """``images (B, 3, H, W)``, ``labels (B,)`` -> logits ``(B, classes)``, ``{loss_ce, loss_kd}``."""
        logits = self.student(images)
        logits_teacher = self.teacher.logits(images)
        p = self.params
        student, teacher = standardized_pair(logits, logits_teacher, p.logit_stand)
        loss_kd = dkd_loss(student, teacher, labels, p.alpha, p.beta, p.temperature)
        return logits, {
            "loss_ce": p.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.warmup_factor() * loss_kd,
        }
