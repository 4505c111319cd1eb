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
    """KL(P ‖ softmax(a)) over the last axis of contiguous ``(N, K)`` rows, divided by ``N``.

    The gradient with respect to the scores is ``(softmax(a) − P) / N``; computing it directly avoids the
    chain of full-size temporaries autograd would build through log-softmax, product and sum (the score
    maps are large: B·K·H·W with K = 4096). Targets are treated as constants.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Per row: Σ_k P·(log P − a) + lse(a)·Σ_k P. The softmax (kept for the backward) gives lse without
        # another exp pass: at a row's maximum m the softmax is exp(m − lse) ≥ 1/K, its own row maximum, so
        # lse = m − log max_k softmax is well conditioned. Each row is reduced on its own (K terms) and the
        # rows are summed in float64: one float32 sum over all B·H·W·K terms would lose about three digits
        # to rounding on large high-entropy maps. P·(log P − a) is built in place in one temporary;
        # entries of P below the smallest normal float (1.2e-38) use its logarithm, an error below 2e-36
        # per entry (``torch.xlogy`` would be exact but runs a scalar loop on CPU).
        probs = torch.softmax(scores, dim=-1)
        lse = scores.amax(dim=-1).sub_(probs.amax(dim=-1).log_())
        terms = targets.clamp_min(torch.finfo(targets.dtype).tiny).log_().sub_(scores).mul_(targets)
        rows = terms.sum(dim=-1).addcmul_(lse, targets.sum(dim=-1))
        loss = (rows.sum(dtype=torch.float64) / scores.shape[0]).to(scores.dtype)
        ctx.save_for_backward(probs, targets)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        probs, targets = ctx.saved_tensors
        return torch.sub(probs, targets).mul_(grad / probs.shape[0]), None


def _rows(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, K, *)`` → contiguous ``(B·…, K)`` rows; no copy for channels-last maps (KD-layer scores)."""
    return t.movedim(1, -1).to(dtype).contiguous().view(-1, t.shape[1])


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
    if targets.requires_grad:  # rare: differentiate through the targets as well, with plain autograd
        p = targets.to(dtype)
        positions = scores.numel() // scores.shape[1]
        log_q = F.log_softmax(scores.to(dtype), dim=1)
        return (torch.xlogy(p, p) - p * log_q).sum() / positions
    return _TemplateKL.apply(_rows(scores, dtype), _rows(targets, dtype))


def template_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of positions where ``argmax_k scores`` equals ``argmax_k targets`` (scalar, no grad)."""
    _check_pair(scores, targets)
    with torch.no_grad():
        return (scores.argmax(1) == targets.argmax(1)).float().mean()


def target_confidence(targets: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``max_k targets`` (the reference's "mean_assign_dist"), scalar, no grad."""
    with torch.no_grad():
        return targets.amax(1).float().mean()
