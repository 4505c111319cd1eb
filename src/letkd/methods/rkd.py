"""RKD — "Relational Knowledge Distillation" (Park, Kim, Lu & Cho, CVPR 2019).

Loss ``ce_weight · CE + weight · (distance_weight · L_dist + angle_weight · L_angle)`` on the globally
pooled penultimate features ``(B, C)`` (RepDistiller's ``feat[-1]``): smooth-L1 between mean-normalised
pairwise distances and between triplet angles.
Defaults (RepDistiller ``train_student.py``/``run_cifar_distill.sh``: ``--distill rkd -r 1 -a 0 -b 1``,
``RKDLoss(w_d=25, w_a=50)``): ``weight 1``, ``distance_weight 25``, ``angle_weight 50``, ``ce_weight 1``,
taps = the ``penultimate`` tap. No extra parameters.
"""

from __future__ import annotations

import torch
from pydantic import Field

from letkd.methods.base import register_method
from letkd.methods.losses import rkd_loss
from letkd.methods.pairs import FeaturePairDistiller, PairParams, global_pool


@register_method("rkd")
class RKD(FeaturePairDistiller):
    """Relational distillation of distances and angles between pooled penultimate embeddings."""

    default_taps = "penultimate"

    class Params(PairParams):
        """``method.params`` of ``rkd``; ``None`` taps = the ``penultimate`` tap (pooled)."""

        distance_weight: float = Field(25.0, ge=0)
        angle_weight: float = Field(50.0, ge=0)

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """RKD of the pooled maps ``(B, C)``."""
        p = self.params
        return rkd_loss(global_pool(s), global_pool(t), p.distance_weight, p.angle_weight)
