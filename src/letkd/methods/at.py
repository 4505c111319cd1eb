"""AT — "Paying More Attention to Attention" (Zagoruyko & Komodakis, ICLR 2017).

Loss: ``ce_weight · CE + weight · Σ_pairs mean((a_s − a_t)²)`` where ``a = normalize(mean_c f^p)``; the
larger grid of a pair is average-pooled to the smaller one. Defaults (CRD/RepDistiller CIFAR-100:
``-r 1 -a 0 -b 1000``): ``p 2``, ``weight 1000``, ``ce_weight 1``, pairs = the outputs of all feature stages
of the two networks, matched in order.
"""

from __future__ import annotations

import torch
from pydantic import Field

from letkd.methods.base import register_method
from letkd.methods.losses import at_loss
from letkd.methods.pairs import FeaturePairDistiller, PairParams


@register_method("at")
class AT(FeaturePairDistiller):
    """Attention transfer on pairs of student/teacher feature maps."""

    class Params(PairParams):
        """``method.params`` of ``at``; ``None`` taps = all feature stages of the network."""

        p: float = Field(2.0, gt=0)
        weight: float = Field(1000.0, ge=0)

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Attention-map distance of pair ``i``."""
        return at_loss(s, t, self.params.p)
