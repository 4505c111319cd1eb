"""VGG with BatchNorm for CIFAR, as in the RepDistiller zoo (vgg8, vgg11, vgg13, vgg16, vgg19).

Five conv groups ``block0..block4`` (conv-BN[-ReLU-conv-BN…], the group's last ReLU applied outside it),
max-pools after groups 0-2 (and 3 for 64×64 inputs), global average pool, ``classifier``. State-dict keys
and forward maths follow RepDistiller's ``models/vgg.py``; the ReLUs after each group are the modules
``relu0..relu4`` so that they can be tapped.
"""

from __future__ import annotations

import torch
from torch import nn

from letkd.models.init import init_fan_out_normal
from letkd.models.registry import register_model
from letkd.models.tap_names import preact_taps

CFG = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
    "S": [[64], [128], [256], [512], [512]],
}


def make_group(widths: list[int], in_channels: int, batch_norm: bool = True) -> nn.Sequential:
    """conv3×3(+BN)-ReLU repeated, without the final ReLU (it is applied by the parent)."""
    layers: list[nn.Module] = []
    for v in widths:
        layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1)]
        layers += [nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(inplace=True)]
        in_channels = v
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """RepDistiller CIFAR VGG: ``(B, 3, H, W) -> (B, num_classes)`` logits.

    Taps: ``penultimate`` = ``relu4`` ``(B, 512, H/8, W/8)``; ``intermediate`` = ``relu3`` (first group at
    the final resolution, ``(B, 512, H/8, W/8)`` on 32×32 inputs); ``stage1..4`` = ``relu1..relu4``.
    """

    def __init__(self, cfg: list[list[int]], batch_norm: bool = True, num_classes: int = 100):
        super().__init__()
        self.block0 = make_group(cfg[0], 3, batch_norm)
        self.block1 = make_group(cfg[1], cfg[0][-1], batch_norm)
        self.block2 = make_group(cfg[2], cfg[1][-1], batch_norm)
        self.block3 = make_group(cfg[3], cfg[2][-1], batch_norm)
        self.block4 = make_group(cfg[4], cfg[3][-1], batch_norm)
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.relu0, self.relu1, self.relu2, self.relu3, self.relu4 = (nn.ReLU() for _ in range(5))
        self.classifier = nn.Linear(512, num_classes)

        init_fan_out_normal(self)

        self.feature_stages = ["relu1", "relu2", "relu3", "relu4"]
        # pre-activations: each group's output (it ends with a BatchNorm), before relu1..relu4
        self.preact_stages = ["block1", "block2", "block3", "block4"]
        self.preact_batchnorms = [f"block{i}.{len(getattr(self, f'block{i}')) - 1}" for i in (1, 2, 3, 4)]
        self.taps = {
            "stem": "relu0",
            "stage1": "relu1",
            "stage2": "relu2",
            "stage3": "relu3",
            "stage4": "relu4",
            "intermediate": "relu3",
            "penultimate": "relu4",
            "classifier": "classifier",
            **preact_taps(self.preact_stages),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, num_classes)`` logits."""
        h = x.shape[2]
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if h == 64:  # RepDistiller pools once more only for 64×64 inputs
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))


def _register(name: str, cfg_key: str) -> None:
    def factory(num_classes: int = 100, **kwargs) -> VGG:
        return VGG(CFG[cfg_key], batch_norm=True, num_classes=num_classes, **kwargs)

    factory.__name__ = name
    factory.__doc__ = f"RepDistiller ``{name}`` (with BatchNorm), configuration {cfg_key!r}."
    register_model(name)(factory)


for _name, _key in (("vgg8", "S"), ("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E")):
    _register(_name, _key)
