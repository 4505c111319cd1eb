"""The letKD distillation loss on template scores and its logging metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _check_pair(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.shape != targets.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must have the same shape "
            "(B, K, H, W)"
        )
    if scores.dim() < 2:
        raise ValueError(f"expected (B, K, ...) tensors, got shape {tuple(scores.shape)}")


class _TemplateKL(torch.autograd.Function):
    """KL(P ‖ softmax(a)) summed over positions and divided by ``positions``, with a one-pass backward.

    The gradient with respect to the scores is ``(softmax(a) − P) / positions``; computing it directly
    avoids the chain of full-size temporaries autograd would build through log-softmax, product and sum
    (the score maps are large: B·K·H·W with K = 4096). Targets are treated as constants.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, targets: torch.Tensor, positions: int) -> torch.Tensor:
        log_q = F.log_softmax(scores, dim=1)
        loss = (torch.xlogy(targets, targets) - targets * log_q).sum() / positions
        ctx.save_for_backward(log_q, targets)
        ctx.positions = positions
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        log_q, targets = ctx.saved_tensors
        return torch.exp(log_q).sub_(targets).mul_(grad / ctx.positions), None, None


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
    positions = scores.numel() // scores.shape[1]
    p = targets.to(dtype)
    if targets.requires_grad:  # rare: differentiate through the targets as well, with plain autograd
        log_q = F.log_softmax(scores.to(dtype), dim=1)
        return (torch.xlogy(p, p) - p * log_q).sum() / positions
    return _TemplateKL.apply(scores.to(dtype), p, positions)


def template_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of positions where ``argmax_k scores`` equals ``argmax_k targets`` (scalar, no grad)."""
    _check_pair(scores, targets)
    with torch.no_grad():
        return (scores.argmax(1) == targets.argmax(1)).float().mean()


def target_confidence(targets: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``max_k targets`` (the reference's "mean_assign_dist"), scalar, no grad."""
    with torch.no_grad():
        return targets.amax(1).float().mean()
