"""Wide ResNets of the RepDistiller zoo (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

State-dict keys and forward maths follow RepDistiller's ``models/wrn.py``. The final pooling is a global
average (identical to its ``avg_pool2d(8)`` on 32×32 inputs); the final BN-ReLU's ReLU is a non-inplace
module so that a hook on it (the ``penultimate`` tap) sees exactly what the pooling receives.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from letkd.models.registry import register_model
from letkd.models.tap_names import preact_taps


class WideBasicBlock(nn.Module):
    """Pre-activation block: ``shortcut + conv(ReLU(BN(conv_s(ReLU(BN(x))))))``; no activation after the sum.

    The shortcut is ``x`` itself when ``in == out``, else a strided 1×1 conv of ``ReLU(BN(x))``.
    ``(B, in, H, W) -> (B, out, H/s, W/s)``; the output can be negative.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.drop(self.relu2(self.bn2(self.conv1(act)))))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A WRN stage: ``.layer`` is the Sequential of ``nb_layers`` pre-activation blocks."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate
                )
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-width for CIFAR: conv1, three NetworkBlocks, BN-ReLU, global pool, ``fc``.

    ``forward(x)`` maps ``(B, 3, H, W)`` to logits ``(B, num_classes)``. Taps: ``penultimate`` = the final
    ReLU ``(B, 64w, H/4, W/4)`` (post-activation), ``intermediate`` = ``block3.layer.0`` (a residual sum,
    pre-activation, may be negative).
    """

    def __init__(self, depth: int, num_classes: int = 100, widen_factor: int = 1, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        self.n_channels = channels[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

        # Stages are the raw block outputs, as RepDistiller's feature list (pre-activation).
        self.feature_stages = ["block1", "block2", "block3"]
        # pre-activations (RepDistiller's preact features): each stage output through the BatchNorm that
        # the next ReLU reads (the next stage's first bn1, the final bn1); the BatchNorm is the tap itself
        self.preact_stages = ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]
        self.preact_batchnorms = list(self.preact_stages)
        self.taps = {
            "stem": "conv1",
            "stage1": "block1",
            "stage2": "block2",
            "stage3": "block3",
            "intermediate": "block3.layer.0",
            "penultimate": "relu",
            "classifier": "fc",
            **preact_taps(self.preact_stages),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, num_classes)`` logits."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _register(depth: int, width: int) -> None:
    name = f"wrn_{depth}_{width}"

    def factory(num_classes: int = 100, **kwargs) -> WideResNet:
        return WideResNet(depth, num_classes=num_classes, widen_factor=width, **kwargs)

    factory.__name__ = name
    factory.__doc__ = f"RepDistiller ``{name}``: WRN-{depth}-{width} for CIFAR."
    register_model(name)(factory)


for _d, _w in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_d, _w)
