"""Parameter and multiply-accumulate counts of KD layers and of whole (grafted or baked) models."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from letkd.deploy import bake
from letkd.graft import grafts, ungraft
from letkd.inference_form import InferenceKDLayer
from letkd.layers import CosineConv2d
from letkd.taps import dummy_input, eval_mode


def kd_layer_cost(channels: int, num_templates: int, height: int, width: int) -> dict[str, int]:
    """Extra parameters and MACs of one :class:`~letkd.layers.KDLayer` on a ``(C, H, W)`` map, per image.

    Parameters: ``K·C`` templates + 1 scale + ``2K`` BatchNorm affine + ``C·K`` value vectors + 1 scale
    (BN running statistics are buffers, not counted). MACs: the two 1×1 convolutions, ``2·C·K`` per position
    (normalisation, BN and the residual add are element-wise and not counted). Its inference form
    (:class:`~letkd.inference_form.InferenceKDLayer`) has the same MACs and ``2·C·K + K`` parameters.
    """
    c, k = channels, num_templates
    return {"parameters": k * c + 1 + 2 * k + c * k + 1, "macs": 2 * c * k * height * width}


def _layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """MACs of one call of a conv / linear / KD-layer module, per image of the batch."""
    batch = output.shape[0] if output.dim() > 1 else 1
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return output.numel() // batch * per_output
    if isinstance(module, CosineConv2d):
        return output.numel() // batch * module.in_channels
    if isinstance(module, InferenceKDLayer):  # output (B, C, ...): two C×K products per position
        return output.numel() // batch * 2 * module.num_templates
    if isinstance(module, nn.Linear):
        return output.numel() // batch * module.in_features
    return 0


@torch.no_grad()
def model_cost(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> dict[str, int]:
    """Parameters and per-image MACs (convolutions incl. cosine 1×1, KD layers in their inference form and
    linear layers) of ``model``.

    Runs one eval-mode forward on a zero input of shape ``(1, *input_size)`` (the training mode is restored);
    grafted KD layers are counted because their hooks run in that forward.
    """
    total = {"macs": 0}
    counted = (nn.modules.conv._ConvNd, nn.Linear, CosineConv2d, InferenceKDLayer)

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


def deployed_cost(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> dict[str, int]:
    """What the deployed form of a grafted ``model`` costs: ``parameters`` and ``macs`` (per image) of
    :func:`letkd.deploy.bake` ``(model)``, and ``extra_parameters`` / ``extra_macs`` over the same model
    without its grafts. ``model`` is not modified."""
    plain = copy.deepcopy(model)
    for path in grafts(plain):
        ungraft(plain, path)
    base, baked = model_cost(plain, input_size), model_cost(bake(model), input_size)
    extra_parameters = baked["parameters"] - base["parameters"]
    return baked | {"extra_parameters": extra_parameters, "extra_macs": baked["macs"] - base["macs"]}


def describe_deployed_cost(cost: dict[str, int]) -> str:
    """One line for :func:`deployed_cost`: the deployed student's size and what its KD layers add to it."""
    total = f"{cost['parameters']:,} parameters, {cost['macs'] / 1e6:,.1f} M MACs per image"
    if not cost["extra_parameters"] and not cost["extra_macs"]:
        return f"deployed student: {total} (no KD layers kept)"
    parameters, macs = cost["extra_parameters"], cost["extra_macs"]
    parameter_share = parameters / max(cost["parameters"] - parameters, 1)
    mac_share = macs / max(cost["macs"] - macs, 1)
    return (
        f"deployed student: {total}; its KD layers add {parameters:,} parameters ({parameter_share:+.0%}) "
        f"and {macs / 1e6:,.1f} M MACs ({mac_share:+.0%}) to the plain model"
    )
