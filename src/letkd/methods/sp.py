"""SP — "Similarity-Preserving Knowledge Distillation" (Tung & Mori, ICCV 2019).

Loss: ``ce_weight · CE + weight · Σ_pairs ‖G_s − G_t‖²_F / B²`` with row-normalised ``(B, B)`` Gram matrices
of the flattened features. Defaults (CRD/RepDistiller CIFAR-100: ``-r 1 -a 0 -b 3000``): ``weight 3000``,
``ce_weight 1``, one pair = the outputs of the last feature stage of each network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from letkd.methods.base import Distiller, MethodContext, MethodParams, register_method
from letkd.methods.features import paired_taps, student_features
from letkd.methods.losses import sp_loss


@register_method("sp")
class SP(Distiller):
    """Similarity-preserving distillation of batch-wise feature similarities."""

    requires_teacher = True

    class Params(MethodParams):
        """``method.params`` of ``sp``; ``None`` taps = the last feature stage of the network."""

        student_taps: list[str] | None = None
        teacher_taps: list[str] | None = None
        weight: float = Field(3000.0, ge=0)
        ce_weight: float = Field(1.0, ge=0)

    def __init__(self, student, teacher, params: Params | None = None, context: MethodContext | None = None):
        super().__init__(student, teacher, params, context)
        p = self.params
        self.student_paths, self.teacher_paths = paired_taps(
            student, self.teacher, p.student_taps, p.teacher_taps, "last", self.context.input_size
        )

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """``images (B, 3, H, W)``, ``labels (B,)`` -> logits ``(B, classes)``, ``{loss_ce, loss_kd}``."""
        logits, feats = student_features(self.student, self.student_paths, images)
        targets = self.teacher.features(images)
        p = self.params
        loss = sum(sp_loss(feats[s], targets[t]) for s, t in zip(self.student_paths, self.teacher_paths))
        return logits, {"loss_ce": p.ce_weight * F.cross_entropy(logits, labels), "loss_kd": p.weight * loss}
