"""FitNet — "FitNets: Hints for Thin Deep Nets" (Romero et al., ICLR 2015).

A learned regressor maps the student's hint feature to the teacher's; loss
``ce_weight · CE + weight · MSE(regressor(f_s), f_t)``. Defaults (CRD/RepDistiller CIFAR-100:
``--hint_layer 2 -r 1 -a 0 -b 100``): hint at the output of stage 2 of both networks, ``weight 100``,
``ce_weight 1``. The regressor is RepDistiller's ``ConvReg`` (conv + BN + ReLU, see :class:`HintRegressor`);
it is used in training only, so the deployed student has no extra parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from letkd.config import ConfigError
from letkd.methods.base import MethodParams, register_method
from letkd.methods.features import resolve_taps
from letkd.methods.pairs import FeaturePairDistiller


class HintRegressor(nn.Module):
    """RepDistiller's ``ConvReg``: ``(B, C_s, H_s, W_s) -> (B, C_t, H_t, W_t)`` by conv, BN and (optionally)
    ReLU.

    The conv depends on the grids: ``H_s == 2·H_t`` → 3×3 stride 2; ``2·H_s == H_t`` → 4×4 transposed conv
    stride 2; ``H_s >= H_t`` → a ``(1+H_s−H_t) × (1+W_s−W_t)`` conv (1×1 when the grids match).
    """

    def __init__(
        self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], use_relu: bool = True
    ) -> None:
        super().__init__()
        s_c, s_h, s_w = student_shape
        t_c, t_h, t_w = teacher_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(f"no regressor from student grid {s_h}×{s_w} to teacher grid {t_h}×{t_w}")
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_s, H_s, W_s) -> (B, C_t, H_t, W_t)``."""
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


@register_method("fitnet")
class FitNet(FeaturePairDistiller):
    """Hint-based feature regression at one student/teacher tap pair."""

    class Params(MethodParams):
        """``method.params`` of ``fitnet``."""

        student_tap: str = "stage2"
        teacher_tap: str = "stage2"
        weight: float = Field(100.0, ge=0)
        ce_weight: float = Field(1.0, ge=0)

    def select_taps(self, student, teacher, params, input_size):
        """One pair: ``student_tap`` with ``teacher_tap``."""
        return resolve_taps(student, [params.student_tap], "student"), resolve_taps(
            teacher, [params.teacher_tap], "teacher"
        )

    def make_connector(self, i, student_shape, teacher_shape):
        """RepDistiller's ``ConvReg`` with ReLU from the student's hint to the teacher's grid and width."""
        try:
            return HintRegressor(student_shape, teacher_shape)
        except ValueError as exc:
            p = self.params
            raise ConfigError(
                f"fitnet: student tap {p.student_tap!r} {student_shape} cannot be regressed to teacher tap "
                f"{p.teacher_tap!r} {teacher_shape}: {exc}; choose taps where the student grid is at least "
                "the teacher's or exactly half of it"
            ) from None

    @property
    def regressor(self) -> HintRegressor:
        """The hint regressor (the only connector)."""
        return self.connectors[0]

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the regressed hint."""
        return F.mse_loss(s, t)
