"""QuEST — "Quantized Embedding Space for Transferring Knowledge" (Jain et al., ECCV 2020).

A template head (:class:`letkd.layers.TemplateHead`, cosine 1×1 conv to K = 4096 templates, scale 3) reads
the student's penultimate map and is trained with the KL loss towards the teacher's soft assignments to a
K-means codebook at temperature τ = 5. Unlike letKD there is no value path: the classifier sees the raw
student features (SPEC §10). Loss: ``ce_weight · CE + Σ_layers weight · KL``, defaults ``weight 1``,
``ce_weight 1``. The head lives in the distiller, not in the student: it is training-only, the deployed
student is the plain network (``extra_parameters() == 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from letkd.layers import TemplateHead
from letkd.methods.base import Distiller, MethodContext, MethodParams, register_method
from letkd.methods.features import student_features
from letkd.methods.template_kd import QuestLayer, TeacherTargets, layer_specs, loss_names, student_shapes
from letkd.supervision.spec import Spec
from letkd.template_loss import template_kl


@register_method("quest")
class QuEST(Distiller):
    """Template heads on student features, trained on codebook soft assignments; no feature change."""

    requires_teacher = True

    class Params(MethodParams):
        """``method.params`` of ``quest``: codebook layers (usually one, at the penultimate tap)."""

        layers: list[QuestLayer] = Field(min_length=1)
        ce_weight: float = Field(1.0, ge=0)
        template_scale: float = Field(3.0, gt=0, description="initial scale of the template cosine conv")

    @classmethod
    def supervision_specs(cls, params: Params) -> list[Spec]:
        """One codebook per layer, in ``params.layers`` order."""
        return layer_specs(params.layers)

    @classmethod
    def example_params(cls) -> dict:
        """One 16-template codebook layer at the penultimate tap."""
        return {"layers": [{"student_tap": "penultimate", "teacher_tap": "penultimate", "num_templates": 16}]}

    def __init__(self, student, teacher, params: Params | None = None, context: MethodContext | None = None):
        super().__init__(student, teacher, params, context)
        if context is None:
            raise ValueError("quest needs a MethodContext (num_classes, input_size, supervision)")
        params = self.params
        self.student_paths, shapes = student_shapes(student, params.layers, context.input_size)
        self.targets = TeacherTargets(self.teacher, params.layers, context.supervision, self.method_name)
        num_templates = self.targets.check(shapes, context.input_size, context.num_classes)
        self.loss_names = loss_names(params.layers)
        self.heads = nn.ModuleList(
            TemplateHead(shape[0], k, template_scale=params.template_scale)
            for shape, k in zip(shapes, num_templates)
        )

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """``images (B, 3, H, W)``, ``labels (B,)`` -> logits, ``{loss_ce, loss_kd_<student tap>...}``."""
        targets = self.targets.lazy(images, labels)
        logits, feats = student_features(self.student, self.student_paths, images)
        losses = {"loss_ce": self.params.ce_weight * F.cross_entropy(logits, labels)}
        for i, (name, layer, path, head, target) in enumerate(
            zip(self.loss_names, self.params.layers, self.student_paths, self.heads, targets)
        ):
            scores = self.targets.on_grid(i, head(feats[path]))  # a finer student grid is pooled
            losses[name] = layer.weight * template_kl(scores, target)
        return logits, losses
