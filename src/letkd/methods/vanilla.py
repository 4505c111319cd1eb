"""Plain supervised training of the student (no teacher): the baseline every method is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from letkd.methods.base import Distiller, register_method


@register_method("vanilla")
class Vanilla(Distiller):
    """Cross-entropy on the labels only; ``forward_train`` returns ``(logits, {"loss_ce": ...})``."""

    def forward_train(
        self, images: torch.Tensor, labels: torch.Tensor, **batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Student logits ``(B, classes)`` and the mean cross-entropy against ``labels (B,)``."""
        logits = self.student(images)
        return logits, {"loss_ce": F.cross_entropy(logits, labels)}
