"""ImageNet MobileNet-V1 student of the letKD paper (``mobilenet_v1_imagenet``).

The reference calls it "MobileNetV2_ImageNet" but it is MobileNet-V1: a stride-2 3×3 stem and 13
depthwise-separable blocks up to 1024 channels (``features``), then ``classifier`` = pool, flatten, Linear.
Module names follow the reference (``features.<i>``, ``classifier.2``) so its checkpoints load.
The pool is a global average (the reference's ``AvgPool2d(7)`` at 224×224 inputs).
"""

from __future__ import annotations

import torch
from torch import nn

from letkd.models.registry import register_model
from letkd.models.tap_names import preact_taps

# (in, out, stride) of the 13 depthwise-separable blocks.
DW_BLOCKS = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
             (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 1024, 2),
             (1024, 1024, 1)]  # fmt: skip


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    """3×3 conv (stride) - BN - ReLU."""
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU())


def conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    """3×3 depthwise(s)-BN-ReLU, 1×1 pointwise-BN-ReLU: ``(B, inp, H, W) -> (B, oup, H/s, W/s)``."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class MobileNetV1ImageNet(nn.Module):
    """MobileNet-V1 for 224×224 ImageNet: ``(B, 3, H, W) -> (B, num_classes)`` logits.

    Taps: ``penultimate`` = ``features`` ``(B, 1024, H/32, W/32)``; ``intermediate`` = ``features.12`` (the
    last stride-2 block, same shape); ``stage1..4`` = ``features.3/5/11/13`` (128, 256, 512, 1024 channels).
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 32, 2), *(conv_dw(i, o, s) for i, o, s in DW_BLOCKS))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(1024, num_classes))

        self.feature_stages = ["features.3", "features.5", "features.11", "features.13"]
        # pre-activations: each stage block's pointwise BatchNorm, before its final ReLU
        self.preact_stages = [f"{p}.4" for p in self.feature_stages]
        self.preact_batchnorms = list(self.preact_stages)
        self.taps = {
            "stem": "features.0",
            "stage1": "features.3",
            "stage2": "features.5",
            "stage3": "features.11",
            "stage4": "features.13",
            "intermediate": "features.12",
            "penultimate": "features",
            "classifier": "classifier.2",
            **preact_taps(self.preact_stages),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, num_classes)`` logits."""
        return self.classifier(self.features(x))


@register_model("mobilenet_v1_imagenet")
def mobilenet_v1_imagenet(num_classes: int = 1000, **kwargs) -> MobileNetV1ImageNet:
    """ImageNet MobileNet-V1 (the paper's ImageNet "MNV2" student)."""
    return MobileNetV1ImageNet(num_classes=num_classes, **kwargs)
