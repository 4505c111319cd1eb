"""RepDistiller's CIFAR ``ResNet50`` teacher (its ``models/resnetv2.py``), plus ResNet18/34 of that file.

ImageNet-style bottleneck ResNet adapted to 32×32: 3×3 stride-1 stem without max-pool, stages at 32, 16, 8
and 4 pixels, classifier key ``linear``. State-dict keys and forward maths follow RepDistiller.
"""

from __future__ import annotations

import torch
from torch import nn

from letkd.models.registry import register_model
from letkd.models.tap_names import preact_taps


def make_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """1×1 conv + BN when the shape changes, else an empty Sequential (identity)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlockV2(nn.Module):
    """conv3×3(s)-BN-ReLU-conv3×3-BN + shortcut, ReLU: ``(B, in, H, W) -> (B, planes, H/s, W/s)``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(in_planes, planes, stride)
        self.relu1 = nn.ReLU(inplace=True)
        self.preact = nn.Identity()  # tap point: the sum before the final ReLU
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(self.preact(out + self.shortcut(x)))


class Bottleneck(nn.Module):
    """1×1-BN-ReLU, 3×3(s)-BN-ReLU, 1×1-BN (4p) + shortcut, ReLU: ``(B, in, H, W) -> (B, 4p, H/s, W/s)``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = make_shortcut(in_planes, self.expansion * planes, stride)
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.preact = nn.Identity()  # tap point: the sum before the final ReLU
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu_out(self.preact(out + self.shortcut(x)))


class ResNetV2(nn.Module):
    """Four-stage CIFAR ResNet (RepDistiller ``resnetv2``): ``(B, 3, H, W) -> (B, num_classes)`` logits.

    Taps: ``penultimate`` = ``layer4`` ``(B, 512·e, H/8, W/8)``, ``intermediate`` = ``layer4.0``.
    """

    def __init__(
        self, block: type[BasicBlockV2] | type[Bottleneck], num_blocks: list[int], num_classes: int = 100
    ):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

        self.feature_stages = ["layer1", "layer2", "layer3", "layer4"]
        # pre-activations: the last block's sum before its ReLU; the BatchNorm of its residual branch
        last = [f"layer{i}.{n - 1}" for i, n in enumerate(num_blocks, start=1)]
        branch_bn = "bn3" if block is Bottleneck else "bn2"
        self.preact_stages = [f"{path}.preact" for path in last]
        self.preact_batchnorms = [f"{path}.{branch_bn}" for path in last]
        self.taps = {
            "stem": "relu",
            "stage1": "layer1",
            "stage2": "layer2",
            "stage3": "layer3",
            "stage4": "layer4",
            "intermediate": "layer4.0",
            "penultimate": "layer4",
            "classifier": "linear",
            **preact_taps(self.preact_stages),
        }

    def _make_layer(
        self, block: type[BasicBlockV2] | type[Bottleneck], planes: int, n: int, stride: int
    ) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, num_classes)`` logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("ResNet50")
def resnet50_cifar(num_classes: int = 100, **kwargs) -> ResNetV2:
    """RepDistiller ``ResNet50``: bottleneck blocks [3, 4, 6, 3] on 32×32 inputs."""
    return ResNetV2(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


@register_model("ResNet18")
def resnet18_cifar(num_classes: int = 100, **kwargs) -> ResNetV2:
    """RepDistiller ``ResNet18``: basic blocks [2, 2, 2, 2] on 32×32 inputs."""
    return ResNetV2(BasicBlockV2, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


@register_model("ResNet34")
def resnet34_cifar(num_classes: int = 100, **kwargs) -> ResNetV2:
    """RepDistiller ``ResNet34``: basic blocks [3, 4, 6, 3] on 32×32 inputs."""
    return ResNetV2(BasicBlockV2, [3, 4, 6, 3], num_classes=num_classes, **kwargs)
