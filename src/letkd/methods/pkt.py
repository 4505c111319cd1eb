"""PKT — "Learning Deep Representations with Probabilistic Knowledge Transfer" (Passalis & Tefas,
ECCV 2018).

Loss ``ce_weight · CE + weight · PKT(e_s, e_t)`` on the globally pooled penultimate features
``(B, C)`` (RepDistiller's ``feat[-1]``): KL between the batch's cosine-similarity distributions.
Defaults (RepDistiller ``train_student.py``/``run_cifar_distill.sh``: ``--distill pkt -r 1 -a 0 -b 30000``):
``weight 30000``, ``ce_weight 1``, taps = the ``penultimate`` tap. No extra parameters.
"""

from __future__ import annotations

import torch
from pydantic import Field

from letkd.methods.base import register_method
from letkd.methods.losses import pkt_loss
from letkd.methods.pairs import FeaturePairDistiller, PairParams, global_pool


@register_method("pkt")
class PKT(FeaturePairDistiller):
    """Probabilistic knowledge transfer on pooled penultimate embeddings."""

    default_taps = "penultimate"

    class Params(PairParams):
        """``method.params`` of ``pkt``; ``None`` taps = the ``penultimate`` tap (pooled)."""

        weight: float = Field(30000.0, ge=0)

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """PKT of the pooled maps ``(B, C)``."""
        return pkt_loss(global_pool(s), global_pool(t))
