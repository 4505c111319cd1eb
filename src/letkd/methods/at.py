"""AT — "Paying More Attention to Attention" (Zagoruyko & Komodakis, ICLR 2017).

Loss: ``ce_weight · CE + weight · Σ_pairs mean((a_s − a_t)²)`` where ``a = normalize(mean_c f^p)``; the
larger grid of a pair is average-pooled to the smaller one. Defaults (CRD/RepDistiller CIFAR-100:
``-r 1 -a 0 -b 1000``): ``p 2``, ``weight 1000``, ``ce_weight 1``, pairs = the outputs of all feature stages
of the two networks, matched in order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from letkd.methods.base import Distiller, MethodContext, MethodParams, register_method
from letkd.methods.features import paired_taps, student_features
from letkd.methods.losses import at_loss


@register_method("at")
class AT(Distiller):
    """Attention transfer on pairs of student/teacher feature maps."""

    requires_teacher = True

    class Params(MethodParams):
        """``method.params`` of ``at``; ``None`` taps = all feature stages of the network."""

        student_taps: list[str] | None = None
        teacher_taps: list[str] | None = None
        p: float = Field(2.0, gt=0)
        weight: float = Field(1000.0, ge=0)
        ce_weight: float = Field(1.0, ge=0)

    def __init__(self, student, teacher, params: Params | None = None, context: MethodContext | None = None):
        super().__init__(student, teacher, params, context)
        p = self.params
        self.student_paths, self.teacher_paths = paired_taps(
            student, self.teacher, p.student_taps, p.teacher_taps, "all", self.context.input_size
        )

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """``images (B, 3, H, W)``, ``labels (B,)`` -> logits ``(B, classes)``, ``{loss_ce, loss_kd}``."""
        logits, feats = student_features(self.student, self.student_paths, images)
        targets = self.teacher.features(images)
        p = self.params
        loss = sum(at_loss(feats[s], targets[t], p.p) for s, t in zip(self.student_paths, self.teacher_paths))
        return logits, {"loss_ce": p.ce_weight * F.cross_entropy(logits, labels), "loss_kd": p.weight * loss}
