"""SP — "Similarity-Preserving Knowledge Distillation" (Tung & Mori, ICCV 2019).

Loss: ``ce_weight · CE + weight · Σ_pairs ‖G_s − G_t‖²_F / B²`` with row-normalised ``(B, B)`` Gram matrices
of the flattened features. Defaults (CRD/RepDistiller CIFAR-100: ``-r 1 -a 0 -b 3000``): ``weight 3000``,
``ce_weight 1``, one pair = the outputs of the last feature stage of each network.
"""

from __future__ import annotations

import torch
from pydantic import Field

from letkd.methods.base import register_method
from letkd.methods.losses import sp_loss
from letkd.methods.pairs import FeaturePairDistiller, PairParams


@register_method("sp")
class SP(FeaturePairDistiller):
    """Similarity-preserving distillation of batch-wise feature similarities."""

    default_taps = "last"

    class Params(PairParams):
        """``method.params`` of ``sp``; ``None`` taps = the last feature stage of the network."""

        weight: float = Field(3000.0, ge=0)

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Batch-similarity distance of pair ``i``."""
        return sp_loss(s, t)
