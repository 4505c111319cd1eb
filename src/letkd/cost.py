"""Parameter and multiply-accumulate counts of KD layers and of whole (grafted) models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from letkd.layers import CosineConv2d
from letkd.taps import dummy_input, eval_mode


def kd_layer_cost(channels: int, num_templates: int, height: int, width: int) -> dict[str, int]:
    """Extra parameters and MACs of one :class:`~letkd.layers.KDLayer` on a ``(C, H, W)`` map, per image.

    Parameters: ``K·C`` templates + 1 scale + ``2K`` BatchNorm affine + ``C·K`` value vectors + 1 scale
    (BN running statistics are buffers, not counted). MACs: the two 1×1 convolutions, ``2·C·K`` per position
    (normalisation, BN and the residual add are element-wise and not counted).
    """
    c, k = channels, num_templates
    return {"parameters": k * c + 1 + 2 * k + c * k + 1, "macs": 2 * c * k * height * width}


def _layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """MACs of one call of a conv / linear layer, per image of the batch."""
    batch = output.shape[0] if output.dim() > 1 else 1
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return output.numel() // batch * per_output
    if isinstance(module, CosineConv2d):
        return output.numel() // batch * module.in_channels
    if isinstance(module, nn.Linear):
        return output.numel() // batch * module.in_features
    return 0


@torch.no_grad()
def model_cost(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> dict[str, int]:
    """Parameters and per-image MACs (convolutions incl. cosine 1×1 and linear layers) of ``model``.

    Runs one eval-mode forward on a zero input of shape ``(1, *input_size)`` (the training mode is restored);
    grafted KD layers are counted because their hooks run in that forward.
    """
    total = {"macs": 0}
    counted = (nn.modules.conv._ConvNd, nn.Linear, CosineConv2d)

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        total["macs"] += _layer_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    try:
        with eval_mode(model):
            model(dummy_input(model, input_size, batch_size=1))
    finally:
        for handle in handles:
            handle.remove()
    return {"parameters": sum(p.numel() for p in model.parameters()), "macs": total["macs"]}
