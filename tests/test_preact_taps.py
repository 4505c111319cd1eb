"""Pre-activation (pre-ReLU) points of the zoo — what ReviewKD's teacher side and OFD read — and the two
methods built on every teacher→student pair of the CIFAR-100 table."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from letkd.config import ConfigError
from letkd.methods import MethodContext, get_method
from letkd.models import TapInferenceError, create_model, feature_stages, get_taps
from letkd.models.tap_names import preact_batchnorms, preact_stages
from letkd.taps import FeatureTaps

pytestmark = pytest.mark.usefixtures("one_thread")

ZOO = ["resnet20", "resnet8x4", "resnet32x4", "resnet110", "ResNet50", "wrn_16_2", "wrn_40_1", "vgg8",
       "MobileNetV2", "ShuffleV1", "ShuffleV2", "mobilenet_v1_imagenet"]  # fmt: skip
#: how each architecture's stage output follows from its pre-activation
RELU_OF_PREACT = {"wrn_16_2": "next ReLU", "wrn_40_1": "next ReLU", "MobileNetV2": "identity"}
PAIRS = ["wrn_40_2_wrn_16_2", "wrn_40_2_wrn_40_1", "resnet56_resnet20", "resnet110_resnet20",
         "resnet110_resnet32", "resnet32x4_resnet8x4", "wrn_40_2_ShuffleV1", "resnet32x4_ShuffleV1",
         "resnet32x4_ShuffleV2", "ResNet50_MobileNetV2"]  # fmt: skip


@functools.cache
def _model(name: str) -> nn.Module:
    return create_model(name, 100).eval()


def _size(name: str) -> int:
    return 224 if name == "mobilenet_v1_imagenet" else 32


@pytest.mark.parametrize("name", ZOO)
def test_every_stage_has_a_pre_relu_point(name):
    model = _model(name)
    stages, preacts = feature_stages(model), preact_stages(model)
    assert len(preacts) == len(stages)
    taps = get_taps(model)
    assert [taps[f"stage{i}_preact"] for i in range(1, len(preacts) + 1)] == preacts
    relus = {"wrn": ["block2.layer.0.relu1", "block3.layer.0.relu1", "relu"]}.get(name[:3], [])
    with torch.no_grad(), FeatureTaps(model, list(dict.fromkeys(stages + preacts + relus))) as reader:
        feats = reader(torch.randn(2, 3, _size(name), _size(name)))
    for i, (stage, preact) in enumerate(zip(stages, preacts)):
        pre = feats[preact]
        assert (pre < 0).any(), f"{preact} holds no negative value: not a pre-activation"
        kind = RELU_OF_PREACT.get(name, "stage ReLU")
        if kind == "stage ReLU":  # the stage output is the ReLU of the point, channel for channel
            torch.testing.assert_close(torch.relu(pre), feats[stage], rtol=0, atol=0)
        elif kind == "next ReLU":  # pre-activation network: the next ReLU reads the point
            torch.testing.assert_close(torch.relu(pre), feats[relus[i]], rtol=0, atol=0)
        else:  # linear bottleneck: no ReLU follows, the stage output is its own pre-activation
            assert preact == stage


@pytest.mark.parametrize("name", ZOO)
def test_batchnorms_before_the_pre_relu_points(name):
    model = _model(name)
    if name == "ShuffleV2":  # half of each point is the un-normalised pass-through split
        with pytest.raises(TapInferenceError, match="no single BatchNorm"):
            preact_batchnorms(model)
        return
    norms = preact_batchnorms(model)
    assert len(norms) == len(preact_stages(model))
    with torch.no_grad(), FeatureTaps(model, preact_stages(model)) as reader:
        feats = reader(torch.randn(2, 3, _size(name), _size(name)))
    for path, preact in zip(norms, preact_stages(model)):
        bn = model.get_submodule(path)
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == feats[preact].shape[1]


def test_models_without_pre_relu_points_are_refused_clearly():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(TapInferenceError, match="declares no pre-activation"):
        preact_stages(model)
    cls = get_method("ofd")
    with pytest.raises(ConfigError, match=r"ofd: teacher: .*ResNet declares no pre-activation"):
        cls.from_config(create_model("resnet8", 10), model, {}, MethodContext(10, (3, 32, 32)))
    with pytest.raises(ConfigError, match="ofd: teacher: ShuffleNetV2 has no single BatchNorm"):
        cls.from_config(create_model("resnet8", 10), create_model("ShuffleV2", 10), {},
                        MethodContext(10, (3, 32, 32)))  # fmt: skip


@pytest.mark.parametrize("pair", PAIRS)
def test_reviewkd_and_ofd_build_on_every_cifar100_pair(pair):
    teacher_name = next(t for t in ("wrn_40_2", "resnet56", "resnet110", "resnet32x4", "ResNet50")
                        if pair.startswith(f"{t}_"))  # fmt: skip
    student_name = pair[len(teacher_name) + 1 :]
    teacher = _model(teacher_name)
    context = MethodContext(100, (3, 32, 32), fold_teacher_batchnorm=False, teacher_channels_last=False)
    for method in ("reviewkd", "ofd"):
        student = create_model(student_name, 100)
        d = get_method(method).from_config(student, teacher, {}, context)
        n = min(len(preact_stages(teacher)), len(feature_stages(student)))
        levels = n + (method == "reviewkd")  # ReviewKD adds the pooled level
        assert len(d.teacher_paths) == len(d.student_paths) == levels
        assert d.teacher_paths[:n] == preact_stages(teacher)[-n:]
        if method == "ofd":
            assert d.student_paths == preact_stages(student)[-n:]
            assert [m.shape[0] for m in d.margins] == [s[0] for s in d.teacher_shapes]
        else:
            assert d.student_paths[:n] == feature_stages(student)[-n:]
            widths = [abf.conv2[0].out_channels for abf in reversed(d.review.abfs)]
            assert widths == [s[0] for s in d.teacher_shapes]
