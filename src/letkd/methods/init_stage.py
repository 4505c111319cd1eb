"""Two-stage feature methods (AB, FSP): an init stage driven by a feature loss alone, then plain training.

RepDistiller (``helper/pretrain.py``) first trains the student's feature layers (and AB's connectors) for
``--init_epochs 30`` epochs at the base LR with the feature loss alone, then runs its 240 usual epochs with
``r·CE + a·KD + b·0`` (``loops.py`` sets ``loss_kd = 0`` for ``abound`` and ``fsp``; the benchmark scripts
use ``-a 0``: CE only). Here both stages live in one run: the first ``init_epochs`` epochs of
``train.epochs`` are the init stage (loss ``{"loss_init": weight · feature loss}``), the rest the main stage
(``{"loss_ce", ["loss_kd"]}``). ``train.epochs`` therefore *includes* the init epochs: the CIFAR-100 configs
run 270 = 30 + 240 epochs with the LR milestones moved by 30 (180/210/240).

RepDistiller trains the two stages with two SGD optimizers (``helper/pretrain.py`` builds its own; the main
stage starts a new one in ``train_student.py``): :meth:`InitStageDistiller.stage_starts` tells the trainer
where the main stage begins, and ``train.fresh_optimizer_per_stage`` (the ``repdistiller`` recipe) drops
the init stage's momentum there. One difference stays: RepDistiller keeps the student modules outside
``get_feat_modules()`` (e.g. MobileNetV2's ``conv2``) in eval mode during its init stage, so their
BatchNorm statistics start the main stage at their initial values; here they are updated from the start.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from letkd.methods.losses import kd_loss
from letkd.methods.pairs import FeaturePairDistiller, PairParams


class InitStageParams(PairParams):
    """Params of the two-stage methods."""

    init_epochs: int = Field(
        30, ge=0, description="epochs of the feature-only init stage (within train.epochs)"
    )
    kd_weight: float = Field(0.0, ge=0, description="Hinton KD weight in the main stage (RepDistiller -a)")
    temperature: float = Field(4.0, gt=0)


class InitStageDistiller(FeaturePairDistiller):
    """Feature loss alone during the first ``init_epochs`` epochs, then ``ce_weight·CE + kd_weight·KD``.

    Parameters without a gradient in a stage (the classifier during init, connectors afterwards) are left
    alone by SGD; under DDP they need ``find_unused_parameters``.
    """

    find_unused_parameters = True

    def in_init_stage(self) -> bool:
        """Whether the current epoch (see :meth:`set_epoch`) belongs to the init stage."""
        return self.epoch < self.params.init_epochs

    def stage_starts(self) -> list[int]:
        """The main stage begins at epoch ``init_epochs`` (none without an init stage)."""
        return [self.params.init_epochs] if self.params.init_epochs > 0 else []

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """Init stage: ``{"loss_init"}``; main stage: ``{"loss_ce"}`` plus ``"loss_kd"`` if ``kd_weight``."""
        p = self.params
        if self.in_init_stage():
            logits, students = self.student_outputs(images)
            return logits, {"loss_init": p.weight * self.feature_loss(students, self.teacher_targets(images))}
        logits = self.student(images)
        losses = {"loss_ce": p.ce_weight * F.cross_entropy(logits, labels)}
        if p.kd_weight > 0:
            losses["loss_kd"] = p.kd_weight * kd_loss(logits, self.teacher.logits(images), p.temperature)
        return logits, losses

    @classmethod
    def example_params(cls) -> dict:
        """One init epoch."""
        return {"init_epochs": 1}
