"""AB reads RepDistiller's ``preact=True`` features: ShuffleNetV2's unshuffled passthrough half beside its
last pre-ReLU half, MobileNetV2's linear stage outputs; both pairs of the paper train instead of being
refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from letkd.config import ConfigError
from letkd.methods import MethodContext, get_method
from letkd.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _ab(student: str, teacher: str, **params):
    torch.manual_seed(0)
    s, t = create_model(student, 100), create_model(teacher, 100)
    context = MethodContext(num_classes=100, input_size=(3, 32, 32))
    return get_method("ab").from_config(s, t, {"init_epochs": 1, **params}, context)


@torch.no_grad()
def _shufflev2_preacts(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """RepDistiller's ShuffleNetV2 forward(preact=True), step by step: per stage, the last unit's first half
    concatenated with its third conv's BatchNorm output (before the ReLU and the shuffle)."""
    x = model.relu1(model.bn1(model.conv1(x)))
    out = []
    for stage in (model.layer1, model.layer2, model.layer3):
        for unit in stage[:-1]:
            x = unit(x)
        last = stage[-1]
        c = x.shape[1] // 2
        half = last.relu1(last.bn1(last.conv1(x[:, c:])))
        out.append(torch.cat([x[:, :c], last.bn3(last.conv3(last.bn2(last.conv2(half))))], 1))
        x = last(x)
    return out


@torch.no_grad()
def _mobilenetv2_feats(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """RepDistiller's MobileNetV2 forward(is_feat=True) features f1..f4: outputs of blocks 1, 2, 4, 6."""
    x, out = model.conv1(x), []
    for i, block in enumerate(model.blocks):
        x = block(x)
        if i in (1, 2, 4, 6):
            out.append(x)
    return out


def test_shufflev2_student_reads_repdistillers_preact_features():
    ab = _ab("ShuffleV2", "resnet8x4").eval()
    x = torch.randn(2, 3, 32, 32)
    _, feats = ab.student_outputs(x)
    expected = _shufflev2_preacts(ab.student, x)
    assert [f.shape[1:] for f in feats] == [(116, 16, 16), (232, 8, 8), (464, 4, 4)]
    for got, want in zip(feats, expected):
        torch.testing.assert_close(got, want)
        assert (got < 0).any()  # pre-activations: the ReLU has not cut them
    with torch.no_grad():
        logits = ab.student(x)
    torch.testing.assert_close(ab.student_outputs(x)[0], logits)


def test_mobilenetv2_student_reads_its_linear_stage_outputs_and_trains():
    ab = _ab("MobileNetV2", "ResNet18")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    ab.eval()
    _, feats = ab.student_outputs(x)
    for got, want in zip(feats, _mobilenetv2_feats(ab.student, x), strict=True):
        torch.testing.assert_close(got, want)
    ab.train()
    ab.set_epoch(0)
    _, losses = ab.forward_train(x, y)
    assert list(losses) == ["loss_init"] and torch.isfinite(losses["loss_init"])
    losses["loss_init"].backward()
    assert ab.student.blocks[6][0].conv[0].weight.grad is not None
    assert all(p.grad is not None for p in ab.connectors.parameters())  # ConvTranspose + BN per pair
    assert ab.stage_starts() == [1]


def test_declared_stages_read_as_teacher_and_undeclared_linear_stages_are_refused():
    ab = _ab("ShuffleV2", "ShuffleV2")
    assert ab.teacher_paths == ["layer1", "layer2", "layer3"]  # outputs: the pre-activations' signs
    student = create_model("resnet8", 100)
    student.layer3[0].relu_out = nn.Identity()  # layer3's output: no longer produced by a ReLU module
    with pytest.raises(ConfigError, match="'layer3' is not the output of an nn.ReLU"):
        get_method("ab").from_config(
            student, create_model("resnet8", 100), {}, MethodContext(100, (3, 32, 32))
        )
