"""The letKD distillation loss on template scores (SPEC §1.4) and its logging metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.shape != targets.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must have the same shape "
            "(B, K, H, W)"
        )
    if scores.dim() < 2:
        raise ValueError(f"expected (B, K, ...) tensors, got shape {tuple(scores.shape)}")


def template_kl(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(targets ‖ softmax(scores)) over the template axis, averaged over all B·H·W positions.

    ``L = (1/N) Σ_n Σ_k P[n,k] (log P[n,k] − log softmax(a_n)_k)`` with ``0·log 0 = 0`` and ``N = B·H·W``
    (PyTorch ``kl_div(..., reduction="batchmean")`` with every position as a batch row).

    Args:
        scores: template logits ``(B, K, H, W)`` (pre-BN scores of a KD layer); any ``(B, K, *)`` works.
        targets: probabilities ``(B, K, H, W)`` that sum to 1 over ``K`` (the teacher's soft assignments).

    Returns:
        a scalar tensor. The computation runs in at least float32 even for half-precision scores.
    """
    _check_pair(scores, targets)
    dtype = torch.promote_types(scores.dtype, torch.float32)
    log_q = F.log_softmax(scores.to(dtype), dim=1)
    p = targets.to(dtype)
    positions = scores.numel() // scores.shape[1]
    return (torch.xlogy(p, p) - p * log_q).sum() / positions


def template_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of positions where ``argmax_k scores`` equals ``argmax_k targets`` (scalar, no grad)."""
    _check_pair(scores, targets)
    with torch.no_grad():
        return (scores.argmax(1) == targets.argmax(1)).float().mean()


def target_confidence(targets: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``max_k targets`` (the reference's "mean_assign_dist"), scalar, no grad."""
    with torch.no_grad():
        return targets.amax(1).float().mean()
