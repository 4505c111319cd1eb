"""AB — "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons"
(Heo, Lee, Yun & Choi, AAAI 2019).

Init stage (see :mod:`letkd.methods.init_stage`): for each stage pair, a connector maps the student's
pre-activation to the teacher's shape (identity when shapes match, else RepDistiller's ``ConvReg`` without
ReLU: conv + BN) and a margin loss pushes it beyond ``±margin`` on the side of the teacher neuron's sign;
pair ``i`` of ``n`` weighs ``2^(i−n+1)``, and each pair's sum is scaled by ``3 / 1000 / B``
(RepDistiller's ``ABLoss``). Then plain training.

Pre-activations: the student's taps are read *before* their final ReLU (a copy of the input of the
``nn.ReLU`` that produces each stage's output, found at start-up, or of the ReLU a tap names; a stage
output that no ReLU produces is refused). Pre-activation networks (WRN) name ReLU taps, as RepDistiller's
``preact`` features do: ``block2.layer.0.relu1``, ``block3.layer.0.relu1``, ``relu``. The teacher's ReLU
outputs are read: the loss only uses the sign of the teacher's pre-activation, and ``relu(t) > 0`` exactly
when ``t > 0``.

Defaults (RepDistiller ``train_student.py``/``run_cifar_distill.sh``: ``--distill abound -r 1 -a 0 -b 1``,
``--init_epochs 30``, ``ABLoss(margin=1.0)``, pairs ``feat[1:-1]`` = every stage): ``init_epochs 30``,
``margin 1``, ``weight 1`` (init loss), ``ce_weight 1``, ``kd_weight 0``. The connectors are used in training
only: the deployed student has no extra parameters.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from letkd.methods.base import register_method
from letkd.methods.features import paired_taps
from letkd.methods.fitnet import HintRegressor
from letkd.methods.init_stage import InitStageDistiller, InitStageParams
from letkd.methods.losses import ab_loss
from letkd.methods.pairs import preactivation_paths


def ab_connector(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module | None:
    """Identity (``None``) when the ``(C, H, W)`` shapes match, else ``ConvReg(use_relu=False)``."""
    if tuple(student_shape) == tuple(teacher_shape):
        return None
    return HintRegressor(student_shape, teacher_shape, use_relu=False)


def ab_pair_weights(n: int) -> list[float]:
    """``2^(i−n+1)`` for pair ``i`` of ``n``: the deepest pair weighs 1, each shallower one half the next."""
    return [2.0 ** (i - n + 1) for i in range(n)]


def ab_pair_loss(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Margin loss of one pair (``source`` after its connector), summed, ``· 3 / 1000 / B``."""
    return ab_loss(source, target, margin) / source.shape[0] * 3 / 1000


@register_method("ab")
class AB(InitStageDistiller):
    """Activation-boundary distillation of the student's stage pre-activations, then CE training."""

    student_reads = "input"

    class Params(InitStageParams):
        """``method.params`` of ``ab``; ``None`` taps = all feature stages (read before their final ReLU)."""

        margin: float = Field(1.0, gt=0)

    def select_taps(self, student, teacher, params, input_size):
        """The ReLUs producing the paired stage outputs (student: their inputs are read)."""
        s_paths, t_paths = paired_taps(
            student, teacher, params.student_taps, params.teacher_taps, "all", input_size
        )
        return (
            preactivation_paths(student, s_paths, input_size, "student", "ab"),
            preactivation_paths(teacher, t_paths, input_size, "teacher", "ab"),
        )

    def make_connector(self, i, student_shape, teacher_shape):
        """See :func:`ab_connector`."""
        return ab_connector(student_shape, teacher_shape)

    def make_pair_weights(self, n: int) -> list[float]:
        """See :func:`ab_pair_weights`."""
        return ab_pair_weights(n)

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """See :func:`ab_pair_loss`."""
        return ab_pair_loss(s, t, self.params.margin)
