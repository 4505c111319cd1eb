"""ReviewKD — "Distilling Knowledge via Knowledge Review" (Chen, Liu, Zhao & Jia, CVPR 2021), as mdistiller's
``distillers/ReviewKD.py`` computes it.

The student's levels — its feature stages (post-ReLU, mdistiller's ``feats``; ``student_preact`` reads their
pre-activations instead) and its pooled penultimate feature as a 1×1 map — go through a stack of
attention-based fusion modules (:class:`ABF`) from the deepest level up: each maps its level to a common
width, fuses it with the residual coming from the level below (nearest up-sampling and two sigmoid
attention weights) and emits a map of the teacher's width and grid. The hierarchical context loss
(:func:`hcl_loss`) compares each output with the teacher's pre-ReLU stage output (and the teacher's pooled
penultimate feature). Loss ``ce_weight · CE + min((epoch+1)/warmup, 1) · weight · HCL``.

Levels: by default every feature stage of each network; when the two have different numbers of stages the
deepest ones common to both are used (mdistiller zips the reversed lists, dropping the student's first
level). ``student_taps`` / ``teacher_taps`` replace the stage lists (same length; the pooled level is always
added). The ABF width is ``min(512, C)`` of the student's pooled feature.

Defaults (mdistiller ``configs/cifar100/reviewkd.yaml`` and ``engine/cfg.py``): ``weight 5``, ``ce_weight 1``,
``warmup 20`` epochs. The ABFs are used in training only: the deployed student has no extra parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from letkd.methods.base import register_method
from letkd.methods.dkd import linear_warmup
from letkd.methods.features import default_preact_taps, default_stage_taps, pair_levels, resolve_taps
from letkd.methods.pairs import FeaturePairDistiller, PairParams, global_pool

#: the ABF width is the student's pooled width, at most this (mdistiller: ``min(512, in_channels[-1])``)
MAX_MID_CHANNELS = 512


class ABF(nn.Module):
    """Attention-based fusion of one level: ``conv1`` (1×1 conv + BN) to ``mid_channels``; with ``fuse``,
    ``att_conv`` (1×1 conv with bias + sigmoid) weighs it against the residual from the deeper level;
    ``conv2`` (3×3 conv + BN) gives the output. State-dict keys are mdistiller's."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        for conv in (self.conv1[0], self.conv2[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, out_size: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C_in, h, w)``, the deeper level's ``residual (B, mid, h', w')`` (``None`` for the deepest)
        -> output ``(B, C_out, *out_size)`` and this level's residual ``(B, mid, *out_size)``."""
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the residual of the deeper level")
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            weights = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * weights[:, :1] + residual * weights[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


class ReviewFusion(nn.Module):
    """The ABF stack. ``in_channels`` / ``out_channels``: per level, finest first, the pooled level last;
    ``abfs`` is held deepest first (``abfs.0`` works on the pooled level), as mdistiller's state dict."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        if len(in_channels) != len(out_channels) or not in_channels:
            raise ValueError(f"one output width per level: {list(in_channels)} vs {list(out_channels)}")
        mid = min(MAX_MID_CHANNELS, in_channels[-1])
        n = len(in_channels)
        abfs = [
            ABF(c_in, mid, c_out, fuse=i < n - 1)
            for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels))
        ]
        self.abfs = nn.ModuleList(reversed(abfs))

    def forward(
        self, levels: Sequence[torch.Tensor], out_sizes: Sequence[Sequence[int]]
    ) -> list[torch.Tensor]:
        """Student ``levels`` (finest first; only the last ``len(abfs)`` are used) -> one output per ABF,
        finest first, of the teacher grids ``out_sizes`` (finest first, one per ABF)."""
        n = len(self.abfs)
        if len(levels) < n or len(out_sizes) != n:
            raise ValueError(f"{n} ABFs need at least {n} levels and {n} output sizes")
        outputs, residual = [], None
        for abf, x, size in zip(self.abfs, reversed(levels[-n:]), reversed(out_sizes)):
            out, residual = abf(x, residual, size)
            outputs.append(out)
        return outputs[::-1]


def hcl_loss(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss over paired ``(B, C, H, W)`` maps: per pair, the full-resolution MSE plus the
    MSE of 4×4, 2×2 and 1×1 average-pooled maps (only those smaller than the map) weighing 1/2, 1/4, 1/8,
    divided by the sum of the weights used; summed over the pairs."""
    total = students[0].new_zeros(())
    for s, t in zip(students, teachers):
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= s.shape[2]:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            weights += weight
        total = total + loss / weights
    return total


def as_map(feature: torch.Tensor) -> torch.Tensor:
    """The global average of a ``(B, C, H, W)`` map as a ``(B, C, 1, 1)`` map."""
    return global_pool(feature)[:, :, None, None]


@register_method("reviewkd")
class ReviewKD(FeaturePairDistiller):
    """Knowledge review: fused student levels against the teacher's pre-ReLU stages (see module docs)."""

    class Params(PairParams):
        """``method.params`` of ``reviewkd``; ``None`` taps = the stages (see module docs)."""

        weight: float = Field(5.0, ge=0)
        ce_weight: float = Field(1.0, ge=0)
        warmup: int = Field(20, ge=0, description="epochs of linear warm-up of the review loss (0 = none)")
        student_preact: bool = Field(False, description="read the student's stages before their final ReLU")

    def __init__(self, student, teacher, params=None, context=None):
        super().__init__(student, teacher, params, context)
        self.review = ReviewFusion([s[0] for s in self.student_shapes], [t[0] for t in self.teacher_shapes])

    def select_taps(self, student, teacher, params, input_size):
        """Student stages (or their pre-activations) and the teacher's pre-activations, the deepest levels
        both have, each followed by the network's ``penultimate`` tap (the pooled level)."""
        s_taps, t_taps = params.student_taps, params.teacher_taps
        if s_taps is None:
            s_taps = (
                default_preact_taps(student, "student", "reviewkd")
                if params.student_preact
                else default_stage_taps(student, "all", "student")
            )
        t_taps = t_taps if t_taps is not None else default_preact_taps(teacher, "teacher", "reviewkd")
        defaults = params.student_taps is None or params.teacher_taps is None
        s_taps, t_taps = pair_levels(s_taps, t_taps, defaults, "reviewkd")
        return (
            resolve_taps(student, [*s_taps, "penultimate"], "student"),
            resolve_taps(teacher, [*t_taps, "penultimate"], "teacher"),
        )

    def feature_loss(self, students: list[torch.Tensor], teachers: list[torch.Tensor]) -> torch.Tensor:
        """HCL between the fused student levels and the teacher's (pooled level as a 1×1 map)."""
        targets = [*teachers[:-1], as_map(teachers[-1])]
        outputs = self.review([*students[:-1], as_map(students[-1])], [t.shape[-2:] for t in targets])
        return hcl_loss(outputs, targets)

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """``{loss_ce, loss_kd}`` with the review loss warmed up over ``warmup`` epochs."""
        logits, losses = super().forward_train(images, labels, **batch)
        losses["loss_kd"] = linear_warmup(self.epoch, self.params.warmup) * losses["loss_kd"]
        return logits, losses
