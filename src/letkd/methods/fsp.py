"""FSP — "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer
Learning" (Yim, Joo, Bae & Kim, CVPR 2017).

Init stage (see :mod:`letkd.methods.init_stage`): FSP matrices ``G = mean_positions f_{i+1} f_iᵀ``
``(B, C_{i+1}, C_i)`` of consecutive maps (the larger grid pooled to the smaller) are matched between student
and teacher by mean squared error, summed over the pairs. Then plain training.

Student and teacher must have the same channel count at every tap (as RepDistiller's ``FSP`` asserts);
other pairs (e.g. wrn_40_2 → wrn_40_1, or across architectures) are refused at start-up.

Defaults (RepDistiller ``train_student.py``/``run_cifar_distill.sh``: ``--distill fsp -r 1 -a 0 -b 50``,
``--init_epochs 30``; its main stage has no FSP term, so ``-b`` is unused; maps ``feat[:-1]`` = the stem
and every stage): taps ``stem`` + all stages, ``init_epochs 30``, ``weight 1`` (init loss), ``ce_weight 1``,
``kd_weight 0``. No extra parameters.
"""

from __future__ import annotations

import torch

from letkd.config import ConfigError
from letkd.methods.base import register_method
from letkd.methods.features import paired_taps, resolve_taps
from letkd.methods.init_stage import InitStageDistiller, InitStageParams
from letkd.methods.losses import fsp_losses


@register_method("fsp")
class FSP(InitStageDistiller):
    """Flow-of-solution-procedure matrices between consecutive maps, then CE training."""

    class Params(InitStageParams):
        """``method.params`` of ``fsp``; ``None`` taps = the stem and all feature stages."""

    def select_taps(self, student, teacher, params, input_size):
        """The params' taps, else ``stem`` followed by the stages of each network."""
        if params.student_taps or params.teacher_taps:
            return paired_taps(student, teacher, params.student_taps, params.teacher_taps, "all", input_size)
        s_paths, t_paths = paired_taps(student, teacher, None, None, "all", input_size)
        stems = resolve_taps(student, ["stem"], "student"), resolve_taps(teacher, ["stem"], "teacher")
        return [*stems[0], *s_paths], [*stems[1], *t_paths]

    def check_pairs(self, student_shapes, teacher_shapes):
        """At least two maps, and equal channels at each position."""
        if len(student_shapes) < 2:
            raise ConfigError("fsp: needs at least two consecutive taps per network")
        s_ch = [s[0] for s in student_shapes]
        t_ch = [t[0] for t in teacher_shapes]
        if s_ch != t_ch:
            raise ConfigError(
                f"fsp: student and teacher need the same channels at every tap, got {s_ch} (student) and "
                f"{t_ch} (teacher): FSP does not apply to this pair; choose taps with equal widths"
            )

    def feature_loss(self, students: list[torch.Tensor], teachers: list[torch.Tensor]) -> torch.Tensor:
        """Sum over consecutive pairs of the FSP-matrix distances."""
        return torch.stack(fsp_losses(students, teachers)).sum()
