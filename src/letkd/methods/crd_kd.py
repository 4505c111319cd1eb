"""CRD+KD — CRD (see :mod:`letkd.methods.crd`) plus Hinton KD on the logits, as in Tian et al., ICLR 2020.

Defaults (RepDistiller ``run_cifar_distill.sh``: ``--distill crd -r 1 -a 1 -b 0.8``, ``--kd_T 4``):
``ce_weight 1``, ``kd_weight 1``, ``temperature 4``, ``weight 0.8`` and CRD's other defaults. Losses
``{loss_ce, loss_crd, loss_kd}``.
"""

from __future__ import annotations

from pydantic import Field

from letkd.methods.base import register_method
from letkd.methods.crd import CRD


@register_method("crd_kd")
class CRDKD(CRD):
    """CRD with a Hinton KD term (weight 1, T 4)."""

    class Params(CRD.Params):
        """``method.params`` of ``crd_kd``."""

        kd_weight: float = Field(1.0, ge=0, description="Hinton KD weight (RepDistiller -a 1)")
