"""Folding a frozen teacher's BatchNorm layers into its convolutions (``teacher.fold_batchnorm``)."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from letkd.fold import fold_batchnorm, foldable_pairs
from letkd.models import create_model


def _frozen(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, 10).eval().requires_grad_(False)
    for m in model.modules():  # non-trivial statistics and affine parameters, so that folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def _batchnorms(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def test_resnet_folds_every_batchnorm_and_computes_the_same_function():
    model = _frozen("resnet8")
    x = torch.randn(4, 3, 32, 32)
    expected = model(x)
    bns = _batchnorms(model)
    folded = fold_batchnorm(model)
    assert sorted(folded) == sorted(bns) and not _batchnorms(model)
    assert not any(k.endswith("running_mean") for k in model.state_dict())
    assert all(not p.requires_grad for p in model.parameters())  # frozen stays frozen
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    assert fold_batchnorm(model) == []  # nothing left to fold


def test_taps_keep_their_modules_and_values():
    model = _frozen("resnet8")
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    for path in ("layer1.0.conv1", "layer2.0.bn2", "layer3"):
        model.get_submodule(path).register_forward_hook(lambda m, i, o, p=path: seen.__setitem__(p, o))
    model(x)
    before = dict(seen)
    folded = fold_batchnorm(model, keep=["layer1.0.conv1", "layer2.0.bn2", "layer3"])
    assert "layer1.0.bn1" not in folded  # its conv is a tap: the tap reads pre-BatchNorm values
    assert "layer2.0.bn2" not in folded  # a tapped BatchNorm keeps its module and hooks
    assert "layer3.0.bn1" in folded  # inside a tapped block: the block's output is unchanged
    model(x)
    for path, value in before.items():
        torch.testing.assert_close(seen[path], value, rtol=1e-4, atol=1e-4)


class _SharedConvOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y) + y  # the convolution's raw output is read twice
        return self.bn2(self.conv2(z))


class _ShapeDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        if x.shape[-1] > 4:  # a symbolic trace cannot follow this branch
            x = x[..., 1:]
        return self.bn(self.conv(x))


def test_only_safe_pairs_are_folded():
    shared = _SharedConvOutput().eval()
    assert foldable_pairs(shared) == [("conv2", "bn2")]
    x = torch.randn(2, 3, 6, 6)
    expected = shared(x)
    fold_batchnorm(shared)
    torch.testing.assert_close(shared(x), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(shared.bn, nn.BatchNorm2d) and isinstance(shared.bn2, nn.Identity)

    training = _SharedConvOutput().train()
    assert foldable_pairs(training) == []  # batch statistics are not constants

    untraceable = _ShapeDependent().eval()
    assert foldable_pairs(untraceable) == []
    assert fold_batchnorm(untraceable) == [] and isinstance(untraceable.bn, nn.BatchNorm2d)


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_1", "MobileNetV2"])
def test_zoo_models_keep_their_outputs(name):
    model = _frozen(name)
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    assert fold_batchnorm(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


class _BatchNormAct(nn.BatchNorm2d):
    """A subclass that computes more than the affine map (as timm's BatchNormAct2d does)."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def test_batchnorm_subclasses_are_not_folded(monkeypatch):
    model = _SharedConvOutput().eval()
    model.bn2 = _BatchNormAct(4).eval()
    leaf = fx.Tracer.is_leaf_module  # trace the subclass as one module call, like torch.nn's own
    monkeypatch.setattr(
        fx.Tracer, "is_leaf_module", lambda self, m, name: isinstance(m, _BatchNormAct) or leaf(self, m, name)
    )
    assert foldable_pairs(model) == []
