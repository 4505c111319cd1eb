"""CIFAR ResNets of the RepDistiller zoo (resnet8 … resnet110, resnet8x4, resnet32x4).

State-dict keys and forward maths follow RepDistiller's ``models/resnet.py`` so that its published
teacher checkpoints load strictly. Differences that change no number: the final pooling is a global
average (identical to RepDistiller's ``AvgPool2d(8)`` on the 8×8 map of a 32×32 input, and equal to its
Tiny-ImageNet ``AvgPool2d(16)`` at 64×64); ReLUs whose outputs are tap points are non-inplace modules.
"""

from __future__ import annotations

import torch
from torch import nn

from letkd.models.registry import register_model
from letkd.models.tap_names import preact_taps


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3×3(s)-BN-ReLU-conv3×3-BN + shortcut, then ReLU: ``(B, in, H, W) -> (B, planes, H/s, W/s)``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.preact = nn.Identity()  # tap point: the sum before the final ReLU
        self.relu_out = nn.ReLU()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(self.preact(out + residual))


class ResNetCifar(nn.Module):
    """RepDistiller CIFAR ResNet: stem, three stages of ``(depth-2)/6`` BasicBlocks, global pool, ``fc``.

    ``forward(x)`` maps ``(B, 3, H, W)`` to logits ``(B, num_classes)``; ``taps`` names the feature points
    (``layer3`` is the penultimate ``(B, w3, H/4, W/4)`` map, ``layer3.0`` the intermediate one).
    """

    def __init__(self, depth: int, num_filters: list[int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet-CIFAR depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

        self.feature_stages = ["layer1", "layer2", "layer3"]
        # pre-activations: the last block's sum before its ReLU; the BatchNorm of its residual branch
        self.preact_stages = [f"layer{i}.{n - 1}.preact" for i in (1, 2, 3)]
        self.preact_batchnorms = [f"layer{i}.{n - 1}.bn2" for i in (1, 2, 3)]
        self.taps = {
            "stem": "relu",
            "stage1": "layer1",
            "stage2": "layer2",
            "stage3": "layer3",
            "intermediate": "layer3.0",
            "penultimate": "layer3",
            "classifier": "fc",
            **preact_taps(self.preact_stages),
        }

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            out_planes = planes * BasicBlock.expansion
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, num_classes)`` logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


_X1 = [16, 16, 32, 64]
_X4 = [32, 64, 128, 256]


def _register(name: str, depth: int, widths: list[int]) -> None:
    def factory(num_classes: int = 100, **kwargs) -> ResNetCifar:
        return ResNetCifar(depth, widths, num_classes=num_classes, **kwargs)

    factory.__name__ = name
    factory.__doc__ = f"RepDistiller ``{name}``: CIFAR ResNet depth {depth}, widths {widths}."
    register_model(name)(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, _X1)
_register("resnet8x4", 8, _X4)
_register("resnet32x4", 32, _X4)
