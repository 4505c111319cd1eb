"""NST — "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (Huang & Wang, 2017).

Loss ``ce_weight · CE + weight · Σ_pairs MMD²`` with the polynomial kernel ``(a·b)²`` between the
L2-normalised spatial maps of the channels (the larger grid pooled to the smaller).
Defaults (RepDistiller ``train_student.py``/``run_cifar_distill.sh``: ``--distill nst -r 1 -a 0 -b 50``,
pairs ``feat[1:-1]`` = every stage): ``weight 50``, ``ce_weight 1``. No extra parameters.
"""

from __future__ import annotations

import torch
from pydantic import Field

from letkd.methods.base import register_method
from letkd.methods.losses import nst_loss
from letkd.methods.pairs import FeaturePairDistiller, PairParams


@register_method("nst")
class NST(FeaturePairDistiller):
    """Neuron selectivity transfer on every stage pair."""

    class Params(PairParams):
        """``method.params`` of ``nst``; ``None`` taps = all feature stages."""

        weight: float = Field(50.0, ge=0)

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Polynomial-kernel MMD² of pair ``i``."""
        return nst_loss(s, t)
