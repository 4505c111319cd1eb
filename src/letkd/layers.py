"""The letKD building blocks: cosine 1×1 convolution, the KD layer and a templates-only head (the KD layer's
inference form is :mod:`letkd.inference_form`)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

_EPS = 1e-12


class _CosineRowsNarrow(torch.autograd.Function):
    """``y = (a @ wᵀ) / max(‖a‖, ε)`` over the last axis of ``a`` (..., K), for ``w`` (C, K) with C < K.

    The backward computes ``∂L/∂a = (g/n) @ w − a · Σ_c g_c y_c / n²`` in one matrix product and one fused
    pass, where plain autograd would build several K-wide temporaries for the norm's gradient.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        flat = rows.reshape(-1, rows.shape[-1])
        raw_norm = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
        norm = raw_norm.clamp_min(_EPS)
        out = (flat @ weight.T).div_(norm)
        ctx.save_for_backward(flat, weight, norm, out, raw_norm >= _EPS)
        ctx.rows_shape = rows.shape
        return out.view(*rows.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        flat, weight, norm, out, unclamped = ctx.saved_tensors
        # under autocast the forward's product ran in the rows' lower precision: keep the backward in it
        weight = weight.to(flat.dtype)
        g = (grad.reshape(-1, weight.shape[0]) / norm).to(flat.dtype)
        grad_weight = g.T @ flat if ctx.needs_input_grad[1] else None
        grad_rows = None
        if ctx.needs_input_grad[0]:
            # the clamped norm is a constant where it was clamped: no gradient through it there
            coef = (g * out).sum(1, keepdim=True).div_(norm).mul_(unclamped)
            grad_rows = (g @ weight).addcmul_(flat, coef, value=-1.0).view(ctx.rows_shape)
        return grad_rows, grad_weight


class CosineConv2d(nn.Module):
    """1×1 convolution of the per-position L2-normalised input with L2-normalised filters, times ``scale``.

    ``y[b, k, h, w] = s · ⟨w_k / ‖w_k‖, x[b, :, h, w] / max(‖x[b, :, h, w]‖, 1e-12)⟩``, so
    ``|y| ≤ s`` and an all-zero input position gives a zero output. No bias.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        scale: initial value of the scalar scale ``s`` (a parameter of shape ``(1,)``); ``None`` = no scale.
        learn_scale: whether ``s`` is trained.

    Input ``(B, C_in, H, W)`` → output ``(B, C_out, H, W)``. ``weight`` has shape ``(C_out, C_in, 1, 1)``
    and is initialised Normal(0, sqrt(2 / C_in)).
    """

    def __init__(
        self, in_channels: int, out_channels: int, scale: float | None = None, learn_scale: bool = True
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        if scale is None:
            self.register_parameter("scale", None)
        else:
            self.scale = nn.Parameter(torch.full((1,), float(scale)), requires_grad=learn_scale)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the filters from Normal(0, sqrt(2 / in_channels)) (the scale is left as is)."""
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / self.in_channels))

    def normalized_weight(self) -> torch.Tensor:
        """The unit-norm filters times the scale, ``(C_out, C_in, 1, 1)``."""
        w = F.normalize(self.weight.flatten(1), dim=1, eps=_EPS)
        if self.scale is not None:
            w = w * self.scale
        return w.view_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` → ``(B, C_out, H, W)``.

        Computed as a matrix product over the ``B·H·W`` positions: the result is a ``(B, C_out, H, W)``
        view of a ``(B, H, W, C_out)`` tensor (channels-last strides). For the wide maps of a KD layer
        (C_out = K = 4096) this avoids the layout conversions a 1×1 ``conv2d`` makes and lets the softmax
        and BatchNorm that follow run over contiguous channels.
        """
        return self.forward_rows(x.movedim(1, -1)).movedim(-1, 1)

    def forward_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The same map on channels-last rows: ``(..., C_in)`` → ``(..., C_out)``."""
        w = self.normalized_weight().flatten(1)
        if self.out_channels >= self.in_channels:
            return F.normalize(rows, dim=-1, eps=_EPS) @ w.T
        # Fewer outputs than inputs: dividing the (smaller) output by the per-position input norm is the same
        # value as normalising the input first, without a normalised copy of the (wide) input.
        return _CosineRowsNarrow.apply(rows, w)

    def extra_repr(self) -> str:
        learn = self.scale is not None and self.scale.requires_grad
        scale = None if self.scale is None else f"{float(self.scale.detach()[0]):g}"
        return f"{self.in_channels}, {self.out_channels}, scale={scale}, learn_scale={learn}"


class TemplateHead(nn.Module):
    """Template matching only: a learnable-scale :class:`CosineConv2d` ``channels → K`` (QuEST's predictor).

    ``forward(x)`` returns the template scores ``(B, K, H, W)`` and leaves the features alone, so when grafted
    (:func:`letkd.graft.graft`) it only observes the target's output.
    """

    modifies_output = False

    def __init__(self, channels: int, num_templates: int, template_scale: float = 3.0) -> None:
        super().__init__()
        self.channels = channels
        self.num_templates = num_templates
        self.template_scale = float(template_scale)
        self.templates = CosineConv2d(channels, num_templates, scale=template_scale, learn_scale=True)

    def graft_spec(self) -> dict[str, Any]:
        """``kind`` and constructor arguments, from which :func:`letkd.deploy.apply_graft_spec` rebuilds
        it."""
        return {
            "kind": "template_head",
            "channels": self.channels,
            "num_templates": self.num_templates,
            "template_scale": self.template_scale,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → scores ``(B, K, H, W)``."""
        return self.templates(x)


class KDLayer(nn.Module):
    """The letKD layer: ``x ↦ (x + α·values(relu(bn(templates(x)))), templates(x))``.

    Submodules: ``templates`` (:class:`CosineConv2d` ``channels → K``, learnable scale ``template_scale``),
    ``bn`` (``BatchNorm2d(K)``) and ``values`` (:class:`CosineConv2d` ``K → channels``, learnable scale
    ``value_scale``). ``alpha`` is a fixed hyper-parameter (a plain attribute, not in the state_dict).

    ``forward(x)`` with ``x`` of shape ``(B, C, H, W)`` returns ``(x_hat, scores)``: ``x_hat``
    ``(B, C, H, W)`` is what the next layer receives, ``scores`` ``(B, K, H, W)`` are the pre-BN template
    logits that the distillation loss supervises.

    With ``alpha == 0`` the value path is skipped entirely and ``x_hat`` *is* ``x``; ``bn`` and ``values``
    then take no part in the forward (their BN statistics are not updated), see :attr:`uses_value_path` and
    :meth:`value_path_parameters` — a DDP trainer must either freeze those parameters or use
    ``find_unused_parameters=True``.
    """

    def __init__(
        self,
        channels: int,
        num_templates: int,
        alpha: float = 1.0,
        template_scale: float = 3.0,
        value_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.num_templates = num_templates
        self.alpha = float(alpha)
        self.template_scale = float(template_scale)
        self.value_scale = float(value_scale)
        self.templates = CosineConv2d(channels, num_templates, scale=template_scale, learn_scale=True)
        self.bn = nn.BatchNorm2d(num_templates)
        self.values = CosineConv2d(num_templates, channels, scale=value_scale, learn_scale=True)

    @property
    def uses_value_path(self) -> bool:
        """Whether ``bn`` and ``values`` run in the forward (``alpha != 0``)."""
        return self.alpha != 0.0

    @property
    def modifies_output(self) -> bool:
        """Whether ``x_hat`` differs from ``x`` (same as :attr:`uses_value_path`)."""
        return self.uses_value_path

    def value_path_parameters(self) -> list[nn.Parameter]:
        """Parameters of ``bn`` and ``values`` (unused by the forward when ``alpha == 0``)."""
        return [*self.bn.parameters(), *self.values.parameters()]

    def value_vectors(self, scores: torch.Tensor) -> torch.Tensor:
        """The value path ``v = values(relu(bn(scores)))``: ``(B, K, H, W)`` → ``(B, C, H, W)``."""
        return self.values(F.relu(self.bn(scores), inplace=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` → ``(x_hat (B, C, H, W), scores (B, K, H, W))``."""
        scores = self.templates(x)
        if not self.uses_value_path:
            return x, scores
        return torch.add(x, self.value_vectors(scores), alpha=self.alpha), scores

    def graft_spec(self) -> dict[str, Any]:
        """``kind`` and constructor arguments (initial scales), from which
        :func:`letkd.deploy.apply_graft_spec` rebuilds it."""
        return {
            "kind": "kd_layer",
            "channels": self.channels,
            "num_templates": self.num_templates,
            "alpha": self.alpha,
            "template_scale": self.template_scale,
            "value_scale": self.value_scale,
        }

    def inference_form(self) -> nn.Module:
        """The layer's eval-mode function as an :class:`~letkd.inference_form.InferenceKDLayer` (what
        :func:`letkd.deploy.bake` ships)."""
        from letkd.inference_form import InferenceKDLayer  # it builds on this module

        return InferenceKDLayer.from_layer(self)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_templates={self.num_templates}, alpha={self.alpha:g}"
