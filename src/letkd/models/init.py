"""Weight initialisation shared by zoo models that follow RepDistiller's VGG/MobileNetV2 scheme."""

from __future__ import annotations

import math

from torch import nn


def init_fan_out_normal(model: nn.Module) -> None:
    """Conv: Normal(0, sqrt(2 / (k²·out))), zero bias. BN: γ 1, β 0. Linear: Normal(0, 0.01), zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / fan))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.01)
            m.bias.data.zero_()
