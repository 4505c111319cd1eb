"""CIFAR ShuffleNetV2 of the RepDistiller zoo (``ShuffleV2``: net size 1, widths 116/232/464/1024).

State-dict keys and forward maths follow RepDistiller's ``models/ShuffleNetv2.py``. Its ``F.relu`` calls
are ReLU modules here (``relu2`` after ``conv2``/``bn2`` is the penultimate tap), and the final
``avg_pool2d(4)`` is a global average (identical at 32×32 inputs). Each unit passes its untouched half
through an ``nn.Identity`` (``passthrough``, no parameters) so that RepDistiller's ``preact`` features can be
read from an unmodified forward: ``model.preactivations`` (used by AB).
"""

from __future__ import annotations

import torch
from torch import nn

from letkd.models.registry import register_model
from letkd.models.shufflenetv1 import ChannelShuffle
from letkd.models.tap_names import preact_taps


class ShuffleUnitV2(nn.Module):
    """Split channels in half; the second half goes 1×1-BN-ReLU, dw3×3-BN, 1×1-BN-ReLU; concat; shuffle(2).

    ``(B, C, H, W) -> (B, C, H, W)``. With ``preact`` (the last unit of a stage) the module ``preact`` also
    receives the unit's pre-activation ``shuffle(concat(x1, bn3 output))``: the output with the branch taken
    before its ReLU, channel for channel, so that it can be tapped; the output is computed as without it.
    """

    def __init__(self, in_channels: int, split_ratio: float = 0.5, preact: bool = False):
        super().__init__()
        self.split_ratio = split_ratio
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ChannelShuffle(groups=2)
        self.passthrough = nn.Identity()  # the untouched half: its input is read as part of a pre-activation
        self.relu1 = nn.ReLU(inplace=True)
        self.relu3 = nn.ReLU(inplace=True)
        self.preact = nn.Identity() if preact else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = int(x.size(1) * self.split_ratio)
        x1, x2 = self.passthrough(x[:, :c]), x[:, c:]
        out = self.relu1(self.bn1(self.conv1(x2)))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        if self.preact is not None:  # a tap point only: its output is not used
            self.preact(self.shuffle(torch.cat([x1, out], 1)))
        return self.shuffle(torch.cat([x1, self.relu3(out)], 1))


class DownUnitV2(nn.Module):
    """Stride-2 unit: left dw3×3/s2-BN, 1×1-BN-ReLU; right 1×1-BN-ReLU, dw3×3/s2-BN, 1×1-BN-ReLU; concat;
    shuffle(2). ``(B, in, H, W) -> (B, out, H/2, W/2)``, post-ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(groups=2)
        self.relu2 = nn.ReLU(inplace=True)
        self.relu3 = nn.ReLU(inplace=True)
        self.relu5 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.relu3(self.bn3(self.conv3(x)))
        right = self.relu5(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """RepDistiller CIFAR ShuffleNetV2: ``(B, 3, H, W) -> (B, num_classes)`` logits.

    Taps: ``penultimate`` = ``relu2`` ``(B, 1024, H/8, W/8)`` (after ``conv2``/``bn2``); ``intermediate`` =
    ``layer3.0`` (the stage-3 down unit, ``(B, 464, H/8, W/8)``).
    """

    def __init__(self, out_channels: list[int], num_blocks: list[int], num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu1 = nn.ReLU()
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(
            out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

        self.feature_stages = ["layer1", "layer2", "layer3"]
        # pre-activations: the last unit's output before its ReLU (see ShuffleUnitV2); half of it is the
        # pass-through split, so no single BatchNorm feeds it (no preact_batchnorms)
        self.preact_stages = [
            f"{stage}.{num_blocks[i]}.preact" for i, stage in enumerate(self.feature_stages)
        ]
        self.taps = {
            "stem": "relu1",
            "stage1": "layer1",
            "stage2": "layer2",
            "stage3": "layer3",
            "intermediate": "layer3.0",
            "penultimate": "relu2",
            "classifier": "linear",
            **preact_taps(self.preact_stages),
        }
        # RepDistiller's preact feature of a stage (forward(preact=True)): its last unit's passthrough half
        # and the input of the unit's last ReLU, concatenated along channels before the shuffle
        self.preactivations = {
            stage: [f"{stage}.{len(layer) - 1}.passthrough", f"{stage}.{len(layer) - 1}.relu3"]
            for stage, layer in (("layer1", self.layer1), ("layer2", self.layer2), ("layer3", self.layer3))
        }

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [DownUnitV2(self.in_channels, out_channels)]
        layers += [ShuffleUnitV2(out_channels, preact=i == num_blocks - 1) for i in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, num_classes)`` logits."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("ShuffleV2")
def shufflev2(num_classes: int = 100, **kwargs) -> ShuffleNetV2:
    """RepDistiller ``ShuffleV2``: net size 1, out_channels (116, 232, 464, 1024), blocks (3, 7, 3)."""
    return ShuffleNetV2([116, 232, 464, 1024], [3, 7, 3], num_classes=num_classes, **kwargs)
