"""VID — "Variational Information Distillation for Knowledge Transfer" (Ahn et al., CVPR 2019).

Per feature pair a regressor μ (three bias-free 1×1 convs, ReLU after the first two; middle width = the
teacher's, as RepDistiller builds ``VIDLoss(s, t, t)``) predicts the teacher map; a learned per-channel
variance ``σ² = softplus(log_scale) + eps`` (initialised so that ``σ² = init_pred_var``) turns it into a
Gaussian NLL, averaged over all elements. Loss ``ce_weight · CE + weight · Σ_pairs NLL``.
Defaults (RepDistiller ``train_student.py``/``run_cifar_distill.sh``: ``--distill vid -r 1 -a 0 -b 1``,
``VIDLoss(init_pred_var=5.0, eps=1e-5)``, pairs ``feat[1:-1]`` = the outputs of every feature stage):
``weight 1``, ``ce_weight 1``, ``init_pred_var 5``, ``eps 1e-5``. Training only: the deployed student has no
extra parameters.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from letkd.methods.base import register_method
from letkd.methods.losses import match_grids, vid_loss
from letkd.methods.pairs import FeaturePairDistiller, PairParams


class VIDRegressor(nn.Module):
    """μ: ``(B, C_s, H, W) -> (B, C_t, H, W)``, plus the variance's per-channel ``log_scale (C_t,)``."""

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, init_pred_var: float, eps: float
    ):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False),
        )  # fmt: skip
        start = math.log(math.exp(init_pred_var - eps) - 1.0)
        self.log_scale = nn.Parameter(torch.full((out_channels,), start))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted teacher mean ``(B, C_t, H, W)``."""
        return self.regressor(x)


@register_method("vid")
class VID(FeaturePairDistiller):
    """Variational information distillation on every stage pair."""

    class Params(PairParams):
        """``method.params`` of ``vid``; ``None`` taps = all feature stages."""

        init_pred_var: float = Field(5.0, gt=0)
        eps: float = Field(1e-5, gt=0)

    def make_connector(self, i, student_shape, teacher_shape):
        """The mean predictor and variance of pair ``i``."""
        p = self.params
        return VIDRegressor(student_shape[0], teacher_shape[0], teacher_shape[0], p.init_pred_var, p.eps)

    def align(self, i, s, t):
        """The larger grid is pooled to the smaller (before the regressor)."""
        return match_grids(s, t)

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Gaussian NLL of the teacher map under pair ``i``'s prediction."""
        return vid_loss(s, t, self.connectors[i].log_scale, self.params.eps)
