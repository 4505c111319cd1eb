"""DIST — "Knowledge Distillation from A Stronger Teacher" (Huang, You, Wang, Qian & Xu, NeurIPS 2022).

Loss: ``ce_weight · CE + T² · (beta · inter + gamma · intra)`` where, with ``p = softmax(z / T)``, the
inter-class relation is ``1 −`` the batch mean of the Pearson correlation between the student's and the
teacher's rows of ``p`` and the intra-class relation the same over the class columns
(:func:`~letkd.methods.losses.dist_loss`).

Defaults are its CIFAR-100 setting (``dist_cifar.yaml`` of hunto/image_classification_sota's
distillation strategies: ``kd: dist_t4`` = β 1, γ 1, τ 4, scaled by ``kd_loss_weight: 2``, with
``ori_loss_weight: 1``): ``beta 2``, ``gamma 2``, ``temperature 4``, ``ce_weight 1``. Its ImageNet setting
(``resnet_dist.yaml``: ``kd: dist``, the same weights) differs only in τ = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from letkd.methods.base import Distiller, MethodParams, register_method
from letkd.methods.losses import dist_loss


@register_method("dist")
class DIST(Distiller):
    """Inter- and intra-class relations of the softened predictions; the teacher runs to its logits."""

    requires_teacher = True

    class Params(MethodParams):
        """``method.params`` of ``dist``."""

        beta: float = Field(2.0, ge=0, description="weight of the inter-class (per-sample) relation")
        gamma: float = Field(2.0, ge=0, description="weight of the intra-class (per-class) relation")
        temperature: float = Field(4.0, gt=0)
        ce_weight: float = Field(1.0, ge=0)

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """``images (B, 3, H, W)``, ``labels (B,)`` -> logits ``(B, classes)``, ``{loss_ce, loss_kd}``."""
        logits = self.student(images)
        logits_teacher = self.teacher.logits(images)
        p = self.params
        return logits, {
            "loss_ce": p.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": dist_loss(logits, logits_teacher, p.beta, p.gamma, p.temperature),
        }
