"""letKD — "Knowledge Distillation Layer that Lets the Student Decide" (Görgün, Gürbüz & Alatan, BMVC 2023).

KD layers (:class:`letkd.layers.KDLayer`) are grafted into the student at its tap points; each layer's
template scores are trained with a KL loss towards the teacher's per-location targets, and its output
``x + α·value`` continues through the student (the layers stay in the deployed model). Loss:
``ce_weight · CE + Σ_layers weight · KL(P_T ‖ softmax(scores))``.

- **letKD-1**: one ``codebook`` layer at the penultimate tap (K = 4096, τ = 1).
- **letKD-2**: a ``subclass`` layer at the intermediate tap (K = 8 per class, 60 LDA components) plus the
  penultimate ``codebook`` layer.

Defaults (SPEC §4, §7): ``alpha 1`` (RN50→MNV2 on CIFAR-100: 0.2 intermediate, 0.1 penultimate),
``weight 1`` per layer, ``ce_weight 1``; heterogeneous pairs set ``teacher_pool: true`` so the teacher grid
matches the student's. Other grids that differ by an integer factor are aligned by average-pooling the finer
side (teacher features or student scores, :func:`letkd.methods.features.aligned_grid`). On ResNet8x4 the
intermediate tap
``layer3.0`` *is* all of ``layer3``: the two KD layers then run back to back (SPEC Q8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from letkd.config import ConfigError
from letkd.graft import graft
from letkd.layers import KDLayer
from letkd.methods.base import Distiller, MethodContext, MethodParams, register_method
from letkd.methods.template_kd import LetKDLayer, TeacherTargets, layer_specs, loss_names, student_shapes
from letkd.supervision.spec import Spec
from letkd.template_loss import template_kl


@register_method("letkd")
class LetKD(Distiller):
    """KD layers grafted into the student, trained on teacher-side template targets."""

    requires_teacher = True

    class Params(MethodParams):
        """``method.params`` of ``letkd``: the KD layers (order = forward order) and the CE weight."""

        layers: list[LetKDLayer] = Field(min_length=1)
        ce_weight: float = Field(1.0, ge=0)
        template_scale: float = Field(3.0, gt=0, description="initial scale of the template cosine conv")
        value_scale: float = Field(1.0, gt=0, description="initial scale of the value cosine conv")

    @classmethod
    def supervision_specs(cls, params: Params) -> list[Spec]:
        """One codebook / sub-class artefact per layer, in ``params.layers`` order."""
        return layer_specs(params.layers)

    @classmethod
    def example_params(cls) -> dict:
        """letKD-2 with small K: a sub-class layer at the intermediate tap and a 16-template codebook."""
        return {
            "layers": [
                {
                    "kind": "subclass",
                    "student_tap": "intermediate",
                    "teacher_tap": "intermediate",
                    "subclasses_per_class": 2,
                    "lda_components": 4,
                },
                {
                    "kind": "codebook",
                    "student_tap": "penultimate",
                    "teacher_tap": "penultimate",
                    "num_templates": 16,
                },
            ]
        }

    def __init__(self, student, teacher, params: Params | None = None, context: MethodContext | None = None):
        super().__init__(student, teacher, params, context)
        if context is None:
            raise ValueError("letkd needs a MethodContext (num_classes, input_size, supervision)")
        params = self.params
        layers = params.layers
        paths, shapes = student_shapes(student, layers, context.input_size)
        if len(set(paths)) != len(paths):
            raise ConfigError(f"letkd: two layers graft the same student module ({paths})")
        self.targets = TeacherTargets(self.teacher, layers, context.supervision, self.method_name)
        num_templates = self.targets.check(shapes, context.input_size, context.num_classes)
        self.loss_names = loss_names(layers)
        self.handles = []
        for layer, path, shape, k in zip(layers, paths, shapes, num_templates):
            kd_layer = KDLayer(
                shape[0],
                k,
                alpha=layer.alpha,
                template_scale=params.template_scale,
                value_scale=params.value_scale,
            )
            self.handles.append(graft(student, path, kd_layer))
        # alpha == 0 skips a layer's value path; DDP must then tolerate its unused parameters
        self.find_unused_parameters = any(not m.uses_value_path for m in self.kd_layers())

    def kd_layers(self) -> list[nn.Module]:
        """The grafted :class:`~letkd.layers.KDLayer` modules, in ``params.layers`` order."""
        return [h.module for h in self.handles]

    def extra_parameters(self) -> int:
        """Parameters of the grafted KD layers (they stay in the deployed student)."""
        return sum(p.numel() for layer in self.kd_layers() for p in layer.parameters())

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """``images (B, 3, H, W)``, ``labels (B,)`` -> logits, ``{loss_ce, loss_kd_<student tap>...}``."""
        targets = self.targets.lazy(images, labels)
        logits = self.student(images)
        losses = {"loss_ce": self.params.ce_weight * F.cross_entropy(logits, labels)}
        for i, (name, layer, handle, target) in enumerate(
            zip(self.loss_names, self.params.layers, self.handles, targets)
        ):
            scores = self.targets.on_grid(i, handle.scores)  # a finer student grid is pooled
            losses[name] = layer.weight * template_kl(scores, target)
        return logits, losses
