"""CIFAR MobileNetV2 of the RepDistiller zoo (``MobileNetV2`` = its ``mobile_half``: T=6, width 0.5).

State-dict keys and forward maths follow RepDistiller's ``models/mobilenetv2.py``: a stride-2 stem, seven
inverted-residual stages ``blocks.0..6``, ``conv2`` (1×1 to 1280, BN, ReLU), global pool, ``classifier.0``.
The final pool is a global average, identical to its ``AvgPool2d(input_size/16, ceil_mode=True)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from letkd.models.init import init_fan_out_normal
from letkd.models.registry import register_model
from letkd.models.tap_names import preact_taps

# (expansion t, channels c, repeats n, stride s) with t = T except for the first stage.
SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
            (None, 160, 3, 2), (None, 320, 1, 1)]  # fmt: skip


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    """3×3 conv (stride) - BN - ReLU."""
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU())


def conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    """1×1 conv - BN - ReLU."""
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU())


class InvertedResidual(nn.Module):
    """1×1 expand (BN, ReLU) → 3×3 depthwise (stride; BN, ReLU) → 1×1 project (BN, linear).

    Residual add iff ``stride == 1 and inp == oup``. ``(B, inp, H, W) -> (B, oup, H/s, W/s)``.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Cifar(nn.Module):
    """RepDistiller CIFAR MobileNetV2: ``(B, 3, H, W) -> (B, num_classes)`` logits.

    Taps: ``penultimate`` = ``conv2`` ``(B, 1280, H/16, W/16)`` (post-ReLU); ``intermediate`` =
    ``blocks.5.0`` ``(B, 160·w, H/16, W/16)`` (linear bottleneck, may be negative).
    """

    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100):
        super().__init__()
        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn(3, input_channel, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTINGS:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t or expansion))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = _make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_1x1_bn(input_channel, self.last_channel)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))

        init_fan_out_normal(self)

        # RepDistiller's feature list: outputs of blocks 1, 2, 4 and 6.
        self.feature_stages = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
        # pre-activations: the stage outputs themselves (linear bottlenecks, no ReLU follows in the stage);
        # their BatchNorm: the last block's projection BN (mdistiller's get_bn_before_relu)
        self.preact_stages = list(self.feature_stages)
        self.preact_batchnorms = [f"{p}.{len(self.get_submodule(p)) - 1}.conv.7" for p in self.feature_stages]
        self.taps = {
            "stem": "conv1",
            "stage1": "blocks.1",
            "stage2": "blocks.2",
            "stage3": "blocks.4",
            "stage4": "blocks.6",
            "intermediate": "blocks.5.0",
            "penultimate": "conv2",
            "classifier": "classifier.0",
            **preact_taps(self.preact_stages),
        }
        # RepDistiller's preact features (forward(preact=True) ignores the flag): the stages end in a
        # linear bottleneck, so a stage's pre-activation is its output — the input of the next module
        nxt = ["blocks.2", "blocks.3", "blocks.5", "conv2"]
        self.preactivations = {stage: [after] for stage, after in zip(self.feature_stages, nxt)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, num_classes)`` logits."""
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def _make_divisible(x: float, divisible_by: int = 8) -> int:
    return int(math.ceil(x * 1.0 / divisible_by) * divisible_by)


@register_model("MobileNetV2")
def mobilenetv2_half(num_classes: int = 100, **kwargs) -> MobileNetV2Cifar:
    """RepDistiller ``MobileNetV2`` (``mobile_half``): expansion 6, width 0.5."""
    return MobileNetV2Cifar(expansion=6, width_mult=0.5, num_classes=num_classes, **kwargs)
