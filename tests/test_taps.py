"""FeatureTaps: reading named features of an unmodified model through forward hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from letkd.graft import graft
from letkd.layers import KDLayer
from letkd.models import create_model
from letkd.taps import FeatureTaps, TapError, UnknownTapError


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def resnet8():
    return create_model("resnet8", num_classes=10).eval()


def manual_resnet_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stage outputs of a CIFAR ResNet computed by calling its submodules one by one."""
    out = model.relu(model.bn1(model.conv1(x)))
    out = model.layer2(model.layer1(out))
    block = model.layer3[0](out)
    stage = block
    for b in list(model.layer3)[1:]:
        stage = b(stage)
    return {"layer3.0": block, "layer3": stage}


def test_several_taps_equal_manual_features_and_model_is_untouched(resnet8):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = manual_resnet_features(resnet8, x)
        logits = resnet8(x)
        with FeatureTaps(resnet8, ["layer3", "layer3.0", "penultimate"]) as taps:
            feats = taps(x)
            assert set(feats) == {"layer3", "layer3.0", "penultimate"}
            torch.testing.assert_close(feats["layer3.0"], expected["layer3.0"])
            torch.testing.assert_close(feats["layer3"], expected["layer3"])
            torch.testing.assert_close(feats["penultimate"], expected["layer3"])  # tap name → module path
            torch.testing.assert_close(taps.output, logits)
            resnet8(x[:1])  # calling the model directly records as well
            assert taps.features["layer3"].shape[0] == 1
    assert hook_count(resnet8) == 0


def test_unknown_tap_lists_close_matches(resnet8):
    with pytest.raises(UnknownTapError, match="layer3.0"):
        FeatureTaps(resnet8, ["layer3.O"])
    with pytest.raises(UnknownTapError, match="valid module paths"):
        FeatureTaps(resnet8, ["nothing_like_it_xyz"])
    assert hook_count(resnet8) == 0


class BnThenInplaceRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def test_tapped_value_is_what_the_next_module_receives_despite_inplace_ops():
    model = BnThenInplaceRelu().eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        pre_activation = model.bn(model.conv(x))
    assert (pre_activation < 0).any()
    with torch.no_grad(), FeatureTaps(model, ["bn"]) as taps:
        torch.testing.assert_close(taps(x)["bn"], pre_activation)
    with torch.no_grad(), FeatureTaps(model, ["bn"], clone=False) as taps:
        with pytest.raises(TapError, match="in place"):
            taps(x)
    # stopping right after the tap: the in-place ReLU never runs, the value is still the pre-activation
    with torch.no_grad(), FeatureTaps(model, ["bn"], stop_after_last=True) as taps:
        torch.testing.assert_close(taps(x)["bn"], pre_activation)
    # an output that is not modified later: no copy, no error
    with torch.no_grad(), FeatureTaps(model, ["conv"], clone=False) as taps:
        torch.testing.assert_close(taps(x)["conv"], model.conv(x))


class Counted(nn.Module):
    """Records how often it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * 2


class TwoStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 3, 1)
        self.shared = nn.Identity()
        self.late = Counted()

    def forward(self, x):
        a = self.shared(self.first(x))
        b = self.shared(a + 1)
        return self.late(b)


def test_stop_after_last_ends_the_forward_early():
    model = TwoStage()
    x = torch.randn(1, 3, 2, 2)
    with FeatureTaps(model, ["first"], stop_after_last=True) as taps:
        feats = taps(x)
    assert model.late.calls == 0 and taps.output is None
    torch.testing.assert_close(feats["first"], model.first(x))
    with FeatureTaps(model, ["first"]) as taps:
        taps(x)
    assert model.late.calls == 1 and taps.output is not None


def test_module_called_twice_needs_which_call():
    model = TwoStage()
    x = torch.randn(1, 3, 2, 2)
    first = model.first(x)
    with FeatureTaps(model, ["shared"]) as taps:
        with pytest.raises(TapError, match="more than once"):
            taps(x)
    for which, expected in [(0, first), (1, first + 1), (-1, first + 1)]:
        with FeatureTaps(model, ["shared"], which_call={"shared": which}) as taps:
            torch.testing.assert_close(taps(x)["shared"], expected)
    with FeatureTaps(model, ["shared", "first"], which_call=0, stop_after_last=True) as taps:
        torch.testing.assert_close(taps(x)["shared"], first)
    with FeatureTaps(model, ["shared"], which_call=5) as taps:
        with pytest.raises(TapError, match="did not produce"):
            taps(x)
    with pytest.raises(ValueError, match="last call"):
        FeatureTaps(model, ["shared"], which_call=-1, stop_after_last=True)
    assert hook_count(model) == 0


def test_taps_on_a_grafted_model_see_the_kd_layer_output():
    model = create_model("resnet8", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), FeatureTaps(model, ["layer3"]) as taps:
        raw = taps(x)["layer3"]
    layer = KDLayer(64, 4)
    with FeatureTaps(model, ["layer3"]) as taps:  # registered before the graft: still sees x_hat
        graft(model, "layer3", layer)
        with torch.no_grad():
            feats = taps(x)
            torch.testing.assert_close(feats["layer3"], layer(raw)[0])


def test_inference_mode_teacher(resnet8):
    x = torch.randn(1, 3, 32, 32)
    taps = FeatureTaps(resnet8, ["layer3.0"], stop_after_last=True, clone=False)
    with torch.inference_mode(), taps:
        feat = taps(x)["layer3.0"]
    assert feat.is_inference() and feat.shape == (1, 64, 8, 8)
