"""FrozenTeacher: the one way a method runs its teacher — inference mode, taps registered once, early stop,
and the speed settings (BatchNorm folding, channels-last, compile) that keep the losses unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from letkd.methods import MethodContext, get_method
from letkd.models import create_model
from letkd.teacher import FrozenTeacher, TeacherError, compile_untapped_submodules
from method_helpers import CODEBOOK_LAYER, NC, SIZE, SUBCLASS_LAYER, _batch, _codebook, _pair, _subclass

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_outputs_leave_inference_mode_equal_the_model_and_do_not_track_gradients():
    _, model = _pair()
    teacher = FrozenTeacher(model)
    assert teacher.add_taps(["stage2", "penultimate"]) == ["layer2", "layer3"]
    images = torch.randn(2, *SIZE)
    logits, feats = teacher.logits(images), teacher.features(images)
    both_logits, both_feats = teacher.logits_and_features(images)
    with torch.no_grad():
        expected = model(images)
        l2 = model.layer2(model.layer1(model.relu(model.bn1(model.conv1(images)))))
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(both_logits, expected)
    torch.testing.assert_close(feats["layer2"], l2)
    torch.testing.assert_close(both_feats["layer3"], feats["layer3"])
    for t in (logits, *feats.values()):
        assert not t.is_inference() and not t.requires_grad
    student_logits = torch.randn(2, NC, requires_grad=True)
    (student_logits * logits).sum().backward()  # usable in a loss autograd saves for the student
    torch.testing.assert_close(student_logits.grad, logits)
    assert not teacher.training and not teacher.train().training  # always in eval mode


def test_taps_are_registered_once_and_the_forward_stops_at_the_deepest_tap():
    _, model = _pair()
    teacher = FrozenTeacher(model)
    teacher.add_taps(["stage2"])
    before = _hooks(model)
    calls = []
    model.layer3.register_forward_hook(lambda *a: calls.append(1))
    for _ in range(3):
        teacher.features(torch.randn(2, *SIZE))
    assert _hooks(model) == before + 1 + 3  # our one layer3 hook plus FeatureTaps' three, kept
    assert calls == []  # layer3 never ran: the forward stopped after layer2
    teacher.logits(torch.randn(2, *SIZE))
    assert calls == [1]  # a logits forward runs to the end, without recording
    with pytest.raises(TeacherError, match="before"):
        teacher.add_taps(["penultimate"])


def test_a_teacher_without_taps_refuses_features():
    teacher = FrozenTeacher(_pair()[1])
    with pytest.raises(TeacherError, match="add_taps"):
        teacher.features(torch.randn(1, *SIZE))


def _pair_with_batchnorm_statistics() -> tuple[nn.Module, nn.Module]:
    """A seeded student/teacher pair whose teacher has non-trivial BatchNorm statistics (so that folding,
    by ``teacher.compile`` or ``teacher.fold_batchnorm``, matters)."""
    torch.manual_seed(0)
    student, teacher = _pair()
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return student, teacher


@pytest.mark.parametrize(
    "name,params,supervision",
    [
        ("kd", {}, None),
        ("at", {}, None),
        ("letkd", {"layers": [SUBCLASS_LAYER, CODEBOOK_LAYER]}, "letkd2"),
    ],
)
def test_compiled_teacher_gives_the_same_losses(name, params, supervision):
    """teacher.compile: the frozen teacher (whole, or its untapped submodules) runs through torch.compile."""
    sup = [_subclass(), _codebook()] if supervision == "letkd2" else None
    losses = []
    for compile_teacher in (False, True):
        student, teacher = _pair_with_batchnorm_statistics()
        context = MethodContext(NC, SIZE, supervision=sup, compile_teacher=compile_teacher)
        d = get_method(name).from_config(student, teacher, params, context).train()
        images, labels = _batch()
        losses.append(d.forward_train(images, labels)[1])
    assert bool(d.teacher._compiled) == (name == "kd")  # logits only: the whole teacher is compiled
    assert ("forward" in vars(teacher.layer1)) == (name != "kd")  # features: its untapped blocks are
    for key in losses[0]:
        torch.testing.assert_close(losses[1][key], losses[0][key], rtol=1e-4, atol=1e-5)


def test_compile_picks_the_largest_untapped_submodules():
    model = create_model("resnet8", NC)
    compiled = compile_untapped_submodules(model, ["layer2", "layer3.0.conv1"])
    # a tap's own forward may be compiled (its hooks run around it); a module holding a tap inside is split
    # up, and modules without parameters (ReLU, pooling) stay eager
    assert compiled == ["conv1", "bn1", "layer1", "layer2", "layer3.0.conv1", "layer3.0.bn1",
                        "layer3.0.conv2", "layer3.0.bn2", "layer3.0.downsample", "fc"]  # fmt: skip
    assert "forward" not in vars(model.layer3) and "forward" not in vars(model.relu)
    assert "forward" in vars(model.layer1) and "forward" in vars(model.layer3[0].conv1)


def _spatial_convs(model: nn.Module) -> list[nn.Conv2d]:
    """Convolutions whose weight layout tells the memory formats apart (1×1 kernels fit both)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]


def _channels_last(weight: torch.Tensor) -> bool:
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


@pytest.mark.parametrize(
    "name,params,supervision",
    [
        ("kd", {}, None),
        ("fitnet", {}, None),
        ("letkd", {"layers": [SUBCLASS_LAYER, CODEBOOK_LAYER]}, "letkd2"),
    ],
)
def test_channels_last_and_folded_teacher_gives_the_same_losses(name, params, supervision):
    """teacher.channels_last and teacher.fold_batchnorm (both default on) change how the teacher computes,
    not what: the losses stay the same, and the modules the method taps are kept."""
    sup = [_subclass(), _codebook()] if supervision == "letkd2" else None
    losses, layouts, batchnorms = [], [], []
    for optimized in (False, True):
        student, teacher = _pair_with_batchnorm_statistics()
        fast = {"teacher_channels_last": optimized, "fold_teacher_batchnorm": optimized}
        context = MethodContext(NC, SIZE, supervision=sup, **fast)
        d = get_method(name).from_config(student, teacher, params, context).train()
        layouts.append({_channels_last(m.weight) for m in _spatial_convs(d.teacher.module)})
        assert not any(_channels_last(m.weight) for m in _spatial_convs(d.student))  # the student's own
        batchnorms.append(sum(isinstance(m, nn.BatchNorm2d) for m in d.teacher.modules()))
        assert d.teacher.tap_paths or name == "kd"  # every feature method declares its taps
        for path in d.teacher.tap_paths:
            assert not isinstance(d.teacher.module.get_submodule(path), nn.Identity)
        images, labels = _batch()
        losses.append(d.forward_train(images, labels)[1])
    assert layouts == [{False}, {True}]
    assert batchnorms[1] < batchnorms[0] and (name != "kd" or batchnorms[1] == 0)
    assert MethodContext(NC).teacher_channels_last and MethodContext(NC).fold_teacher_batchnorm  # defaults
    for key in losses[0]:
        torch.testing.assert_close(losses[1][key], losses[0][key], rtol=1e-4, atol=1e-5)
