"""OFD — "A Comprehensive Overhaul of Feature Distillation" (Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019), as
mdistiller's ``distillers/OFD.py`` computes it.

Both networks are read at their stages' pre-activations (before the final ReLU; the zoo's
``preact_stages``, see docs/models.md). A connector per level (1×1 conv + BN) maps the student's map to the
teacher's width; the teacher's map is average-pooled to the student's grid; the partial L2 distance
(:func:`partial_l2`) ignores student values below a per-channel margin where the teacher's is below it too.
The margins come from the teacher's BatchNorm before each distilled ReLU (:func:`ofd_margins`: the
expected value of the negative part of ``N(β, γ²)``), computed once when the method is built. Level ``i`` of
``n`` weighs ``1/2^(n−1−i)``. Loss ``ce_weight · CE + weight · Σ_i w_i · partial_l2_i``.

Levels: every stage of each network by default, the deepest ones common to both when the numbers differ
(mdistiller's ``_align_list``); ``student_taps`` / ``teacher_taps`` name other pre-activation points and then
``teacher_batchnorms`` the BatchNorm before each teacher point. A teacher whose pre-activations no single
BatchNorm feeds (ShuffleNetV2) is refused.

Defaults (mdistiller ``engine/cfg.py``): ``weight 1e-3``, ``ce_weight 1``. The connectors are used in training
only: the deployed student has no extra parameters. The teacher stays in eval mode (mdistiller's OFD switches
the teacher to training mode with the student, so its BatchNorms use batch statistics there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from letkd.config import ConfigError
from letkd.methods.ab import ab_pair_weights
from letkd.methods.base import register_method
from letkd.methods.features import default_preact_taps, pair_levels, resolve_taps
from letkd.methods.pairs import FeaturePairDistiller, PairParams
from letkd.models import TapInferenceError
from letkd.models.tap_names import preact_batchnorms

#: below this probability of a negative pre-activation the margin is −3σ (mdistiller)
NEGATIVE_PROBABILITY_FLOOR = 0.001


@torch.no_grad()
def ofd_margins(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-channel margins ``(C,)`` of a BatchNorm with ``weight`` γ and ``bias`` β: with ``s = |γ|`` and
    ``P = Φ(−β/s)``, ``β − s·φ(β/s)/P`` (the mean of ``N(β, s²)`` below zero), or ``−3s`` where ``P`` is at
    most 0.001; ``min(β, 0)`` where ``s = 0``. Computed in float64, returned as float32."""
    s, m = weight.detach().double().abs(), bias.detach().double()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    p = torch.special.ndtr(-m / safe)
    density = torch.exp(-((m / safe) ** 2) / 2) / math.sqrt(2 * math.pi)
    expected = m - safe * density / torch.where(p > 0, p, torch.ones_like(p))
    margin = torch.where(p > NEGATIVE_PROBABILITY_FLOOR, expected, -3 * s)
    return torch.where(s > 0, margin, m.clamp(max=0)).float()


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's distance between ``(B, C, H, W)`` maps with per-channel ``margin (C,)``: ``(s − m)²`` where the
    teacher is at or below the margin and the student above it, ``(s − t)²`` where the teacher is positive or
    between the margin and zero with the student above it, else 0; mean over the batch, sum over the rest.
    Computed in float32 at least (squares of half-precision features overflow)."""
    dtype = torch.promote_types(source.dtype, torch.float32)
    source, target, margin = source.to(dtype), target.to(dtype), margin.view(1, -1, 1, 1).to(dtype)
    above_margin = (source > margin) & (target <= margin)
    off_target = ((source > target) & (target > margin) & (target <= 0)) | (target > 0)
    loss = (source - margin).pow(2) * above_margin + (source - target).pow(2) * off_target
    return loss.sum() / source.shape[0]


def ofd_connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """1×1 conv (no bias, He-normal by fan-out) + BN (1, 0): ``(B, C_s, H, W) -> (B, C_t, H, W)``; keys
    ``0.weight``, ``1.*`` as mdistiller's ``ConnectorConvBN``."""
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_channels))


@register_method("ofd")
class OFD(FeaturePairDistiller):
    """Overhaul of feature distillation on pre-ReLU stage maps (see module docs)."""

    class Params(PairParams):
        """``method.params`` of ``ofd``; ``None`` taps = the pre-activation stages (see module docs)."""

        weight: float = Field(1e-3, ge=0)
        ce_weight: float = Field(1.0, ge=0)
        teacher_batchnorms: list[str] | None = Field(
            None, description="BatchNorm before each teacher tap (margins); default: the zoo's"
        )

    def __init__(self, student, teacher, params=None, context=None):
        super().__init__(student, teacher, params, context)
        network = self.teacher.module
        norms = self._teacher_batchnorms(network)
        for i, (path, shape) in enumerate(zip(norms, self.teacher_shapes)):
            bn = network.get_submodule(path)
            if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != shape[0]:
                folded = " (already folded into its convolution?)" if isinstance(bn, nn.Identity) else ""
                raise ConfigError(
                    f"ofd: teacher module {path!r} ({type(bn).__name__}{folded}) is not a BatchNorm2d "
                    f"feeding the {shape[0]} channels of teacher tap {self.teacher_paths[i]!r}"
                )
            # before the teacher is prepared: folding would fold these BatchNorms away
            self.register_buffer(f"margin{i}", ofd_margins(bn.weight, bn.bias), persistent=False)

    def _teacher_batchnorms(self, network: nn.Module) -> list[str]:
        """The BatchNorm paths, one per teacher level: the params' or the zoo's (aligned like the taps)."""
        norms = self.params.teacher_batchnorms
        if norms is None:
            if self.params.teacher_taps is not None:
                raise ConfigError(
                    "ofd: with teacher_taps, name the BatchNorm before each in teacher_batchnorms"
                )
            try:
                norms = preact_batchnorms(network)
            except TapInferenceError as exc:
                raise ConfigError(f"ofd: teacher: {exc} (teacher_batchnorms)") from None
            norms = norms[len(norms) - len(self.teacher_paths) :]
        if len(norms) != len(self.teacher_paths):
            raise ConfigError(
                f"ofd: {len(norms)} teacher_batchnorms for {len(self.teacher_paths)} teacher taps"
            )
        return list(norms)

    @property
    def margins(self) -> list[torch.Tensor]:
        """Per-level margins ``(C_t,)``."""
        return [getattr(self, f"margin{i}") for i in range(len(self.teacher_paths))]

    def select_taps(self, student, teacher, params, input_size):
        """Pre-activation points of both networks: the params' lists, or the deepest stages both have."""
        s_taps = params.student_taps or default_preact_taps(student, "student", "ofd")
        t_taps = params.teacher_taps or default_preact_taps(teacher, "teacher", "ofd")
        defaults = params.student_taps is None or params.teacher_taps is None
        s_taps, t_taps = pair_levels(s_taps, t_taps, defaults, "ofd")
        return resolve_taps(student, s_taps, "student"), resolve_taps(teacher, t_taps, "teacher")

    def make_connector(self, i, student_shape, teacher_shape):
        """See :func:`ofd_connector`."""
        return ofd_connector(student_shape[0], teacher_shape[0])

    def make_pair_weights(self, n: int) -> list[float]:
        """``1/2^(n−1−i)``: the deepest level weighs 1 (the same weights as AB's)."""
        return ab_pair_weights(n)

    def align(self, i, s, t):
        """The teacher map average-pooled to the student's grid."""
        return s, F.adaptive_avg_pool2d(t, s.shape[-2:])

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """See :func:`partial_l2`."""
        return partial_l2(s, t, self.margins[i])
