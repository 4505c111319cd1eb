"""The inference form of a trained KD layer: what :func:`letkd.deploy.bake` ships in place of a
:class:`~letkd.layers.KDLayer` (BatchNorm, scales and ``alpha`` folded in; the score map computed in chunks
that stay in cache)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from letkd.layers import _EPS, KDLayer


class InferenceKDLayer(nn.Module):
    """A trained :class:`KDLayer`'s eval-mode ``x_hat``, computed without writing its score map to memory.

    ``x ↦ x + α·values(relu(bn(templates(x))))`` with the BatchNorm's running statistics: the function of
    ``KDLayer.eval()(x)[0]`` up to float rounding (≈1e-7 relative in float32), from folded tensors
    (parameters, frozen):

    - ``templates`` ``(K, C)``: the unit templates times the template scale and the BatchNorm's
      ``γ/√(var + eps)``, and ``shift`` ``(K,)``: ``β − mean·γ/√(var + eps)``, so that
      ``z = relu(x̂ · templatesᵀ + shift)`` is ``relu(bn(scores))`` for the unit-normalised position ``x̂``;
    - ``values`` ``(K, C)``: the unit value vectors (transposed) times the value scale and ``alpha``, so that
      the residual is ``z · values / max(‖z‖, 1e-12)``.

    On the CPU the ``(positions, K)`` map ``z`` is produced, used and dropped in chunks of templates
    (:meth:`chunk_size`) small enough to stay in the cores' caches: per chunk one matrix product starting
    from the shift, one in-place ReLU, one sum of squares and one matrix product accumulated into the
    output, where the training layer writes the full map once and reads it five times (BatchNorm, ReLU,
    norm, product). ``bn_scale`` (``(K,)``, a buffer) keeps the folded BatchNorm scale so that
    :meth:`scores` gives the pre-BN template scores (not for templates whose BatchNorm weight is exactly
    0: their direction is folded away). Inference only: nothing here trains.
    """

    #: size in bytes of one chunk of the ``(positions, K)`` map (split between the threads, it stays in
    #: their L2 caches; the best measured on 1 MiB-per-core caches)
    chunk_bytes = 1 << 21
    #: fewest templates per chunk: below this the matrix products lose more than the cache saves
    min_chunk = 64
    #: positions assumed when a traced program with a dynamic batch size (``torch.export``) fixes the chunk
    #: size, which must not depend on the batch size there
    traced_positions = 4096

    def __init__(self, channels: int, num_templates: int) -> None:
        super().__init__()
        self.channels = channels
        self.num_templates = num_templates
        shape = (num_templates, channels)
        self.templates = nn.Parameter(torch.zeros(shape), requires_grad=False)
        self.shift = nn.Parameter(torch.zeros(num_templates), requires_grad=False)
        self.values = nn.Parameter(torch.zeros(shape), requires_grad=False)
        self.register_buffer("bn_scale", torch.ones(num_templates))

    @classmethod
    @torch.no_grad()
    def from_layer(cls, layer: KDLayer) -> InferenceKDLayer:
        """Fold ``layer``'s eval-mode BatchNorm, scales and ``alpha`` (in float64, then cast back)."""
        bn, weight = layer.bn, layer.templates.weight
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("a KD layer without BatchNorm running statistics has no inference form")
        if not layer.uses_value_path:
            raise ValueError("a KD layer with alpha == 0 leaves its input as it is: it has no inference form")
        wide = torch.float64
        bn_scale = bn.running_var.to(wide).add(bn.eps).rsqrt()
        if bn.weight is not None:
            bn_scale = bn_scale * bn.weight.to(wide)
        shift = -bn.running_mean.to(wide) * bn_scale
        if bn.bias is not None:
            shift = shift + bn.bias.to(wide)
        templates = layer.templates.normalized_weight().flatten(1).to(wide)
        values = layer.values.normalized_weight().flatten(1).to(wide).T * layer.alpha
        folded = cls(layer.channels, layer.num_templates).to(device=weight.device, dtype=weight.dtype)
        folded.templates.copy_(templates * bn_scale[:, None])
        folded.shift.copy_(shift)
        folded.values.copy_(values)
        folded.bn_scale.copy_(bn_scale)
        return folded

    def chunk_size(self, positions: int) -> int:
        """Templates per chunk for ``positions`` rows: the largest power of two whose chunk of the map fits
        :attr:`chunk_bytes`, at least :attr:`min_chunk`, at most K (one chunk for a single small image)."""
        size = self.templates.element_size()
        return templates_per_chunk(positions, self.num_templates, size, self.chunk_bytes, self.min_chunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``x_hat`` ``(B, C, H, W)``."""
        rows = x.movedim(1, -1)
        return torch.add(x, self.residual_rows(rows).movedim(-1, 1))

    def residual_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The residual ``x_hat − x`` of channels-last rows: ``(..., C)`` → ``(..., C)``."""
        flat = F.normalize(rows.reshape(-1, self.channels), dim=1, eps=_EPS)
        weights = (self.templates, self.shift, self.values)
        positions = flat.shape[0]
        if flat.device.type != "cpu":  # a GPU's caches and launch costs favour one product for all templates
            out = chunked_kd_residual(flat, *weights, self.num_templates)
        elif torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            # torch.compile: inductor's own code for this loop is far slower than the eager one (it does not
            # keep the chunks in cache), so the loop runs as one opaque operator that picks its chunks itself
            out = torch.ops.letkd.kd_layer_residual(flat, *weights, self.chunk_bytes, self.min_chunk)
        elif isinstance(positions, int):
            out = chunked_kd_residual(flat, *weights, self.chunk_size(positions))
        else:  # a symbolic batch size (torch.export with a dynamic batch): the plan must not depend on it
            per_example = math.prod(rows.shape[1:-1])
            chunk = self.chunk_size(max(self.traced_positions, per_example))
            out = chunked_kd_residual(flat, *weights, chunk)
        return out.view(rows.shape)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-BatchNorm template scores ``(B, K, H, W)`` that the training layer returns (as a
        channels-last view; computed in full, so not on the fast path)."""
        flat = F.normalize(x.movedim(1, -1).reshape(-1, self.channels), dim=1, eps=_EPS)
        raw = (flat @ self.templates.T) / self.bn_scale
        return raw.view(*x.movedim(1, -1).shape[:-1], self.num_templates).movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_templates={self.num_templates}"


def templates_per_chunk(
    positions: int, num_templates: int, element_size: int, chunk_bytes: int, least: int
) -> int:
    """The largest power of two of templates whose ``(positions, chunk)`` map fits ``chunk_bytes``, at least
    ``least``, at most ``num_templates``."""
    fit = chunk_bytes // (max(positions, 1) * element_size)
    return min(max(1 << max(fit, 1).bit_length() - 1, least), num_templates)


def chunked_kd_residual(
    rows: torch.Tensor, templates: torch.Tensor, shift: torch.Tensor, values: torch.Tensor, chunk: int
) -> torch.Tensor:
    """``z · values / max(‖z‖, 1e-12)`` for ``z = relu(rows · templatesᵀ + shift)``, ``chunk`` templates at a
    time: ``rows`` ``(N, C)``, ``templates`` and ``values`` ``(K, C)``, ``shift`` ``(K,)`` → ``(N, C)``.

    In eager inference one ``(N, chunk)`` buffer holds the chunk of ``z`` being used (a fresh buffer per
    chunk costs a page-faulting allocation each time); its sum of squares and its product with the values
    are accumulated before the next chunk overwrites it. Under autograd, autocast or a tracer
    (``torch.export``) each chunk gets its own tensor instead, since none of them takes ``out=`` arguments.
    """
    n = rows.shape[0]
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in (rows, templates, shift, values))
    reuse = not (recording or torch.compiler.is_compiling() or torch.is_autocast_enabled(rows.device.type))
    buffer = rows.new_empty(n * min(chunk, templates.shape[0])) if reuse else None
    out = square_sum = None
    for part, part_shift, part_values in zip(templates.split(chunk), shift.split(chunk), values.split(chunk)):
        if buffer is None:
            z = torch.addmm(part_shift, rows, part.T).relu_()
        else:
            z = buffer[: n * part.shape[0]].view(n, part.shape[0])
            torch.addmm(part_shift, rows, part.T, out=z).relu_()
        squares = torch.linalg.vector_norm(z, dim=1).square()
        if out is None:
            out, square_sum = z @ part_values, squares
        else:
            out = out.addmm_(z, part_values)
            square_sum = square_sum.add_(squares)
    return out / square_sum.sqrt().clamp_min(_EPS).unsqueeze(1)


@torch.library.custom_op("letkd::kd_layer_residual", mutates_args=())
def _kd_layer_residual_op(
    rows: torch.Tensor,
    templates: torch.Tensor,
    shift: torch.Tensor,
    values: torch.Tensor,
    chunk_bytes: int,
    least: int,
) -> torch.Tensor:
    """:func:`chunked_kd_residual` with chunks sized for the actual rows, opaque to ``torch.compile``."""
    chunk = templates_per_chunk(rows.shape[0], templates.shape[0], rows.element_size(), chunk_bytes, least)
    return chunked_kd_residual(rows, templates, shift, values, chunk)


@_kd_layer_residual_op.register_fake
def _(rows, templates, shift, values, chunk_bytes, least):
    return rows.new_empty(rows.shape[0], values.shape[1])
