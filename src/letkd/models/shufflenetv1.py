"""CIFAR ShuffleNetV1 of the RepDistiller zoo (``ShuffleV1``: groups 3, widths 240/480/960, blocks 4/8/4).

State-dict keys and forward maths follow RepDistiller's ``models/ShuffleNetv1.py``. Its ``F.relu`` calls
are ReLU modules here, and the final ``avg_pool2d(4)`` is a global average (identical at 32×32 inputs).
"""

from __future__ import annotations

import torch
from torch import nn

from letkd.models.registry import register_model
from letkd.models.tap_names import preact_taps


class ChannelShuffle(nn.Module):
    """``(B, C, H, W)``: view as ``(B, g, C/g, H, W)``, swap the group axes, flatten back."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = self.groups
        return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleUnitV1(nn.Module):
    """1×1 group conv-BN-ReLU, shuffle, 3×3 depthwise(s)-BN-ReLU, 1×1 group conv-BN, combine, ReLU.

    Stride 2: ``concat(branch, AvgPool3×3/s2(x))``; stride 1: ``branch + x``.
    ``(B, in, H, W) -> (B, out + (in if stride 2 else 0), H/s, W/s)``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ChannelShuffle(groups=g)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.preact = nn.Identity()  # tap point: the combination before the final ReLU
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle1(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return self.relu_out(self.preact(torch.cat([out, res], 1) if self.stride == 2 else out + res))


class ShuffleNetV1(nn.Module):
    """RepDistiller CIFAR ShuffleNetV1: ``(B, 3, H, W) -> (B, num_classes)`` logits.

    Taps: ``penultimate`` = ``layer3`` ``(B, 960, H/8, W/8)``; ``intermediate`` = ``layer3.0`` (stride-2 unit,
    same shape); both post-ReLU.
    """

    def __init__(self, out_planes: list[int], num_blocks: list[int], groups: int, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

        self.feature_stages = ["layer1", "layer2", "layer3"]
        # pre-activations: the last unit's combination before its ReLU; where that unit sums (stride 1)
        # its branch BatchNorm bn3 feeds it, as bn2 does in a ResNet block (a concatenation has none)
        last = [f"{stage}.{len(self.get_submodule(stage)) - 1}" for stage in self.feature_stages]
        self.preact_stages = [f"{path}.preact" for path in last]
        if all(self.get_submodule(path).stride == 1 for path in last):
            self.preact_batchnorms = [f"{path}.bn3" for path in last]
        self.taps = {
            "stem": "relu",
            "stage1": "layer1",
            "stage2": "layer2",
            "stage3": "layer3",
            "intermediate": "layer3.0",
            "penultimate": "layer3",
            "classifier": "linear",
            **preact_taps(self.preact_stages),
        }

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(ShuffleUnitV1(self.in_planes, out_planes - cat_planes, 2 if i == 0 else 1, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, num_classes)`` logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("ShuffleV1")
def shufflev1(num_classes: int = 100, **kwargs) -> ShuffleNetV1:
    """RepDistiller ``ShuffleV1``: groups 3, out_planes [240, 480, 960], blocks [4, 8, 4]."""
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes, **kwargs)
