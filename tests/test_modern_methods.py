"""ReviewKD, OFD, DIST and LSKD against their reference code's golden values
(``fixtures/modern_methods_reference.npz``: mdistiller's ``ReviewKD.py`` and ``OFD.py``, DIST's
``dist_kd.py``, the logit-standardization KD code): losses, outputs, gradients and BatchNorm running
statistics. Modules are loaded with ``strict=True`` under the reference's keys; shapes and settings are read
from the file."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from letkd.config import ConfigError
from letkd.methods import MethodContext, get_method
from letkd.methods.kd import standardized_pair
from letkd.methods.losses import dist_loss, dkd_loss, kd_loss
from letkd.methods.ofd import ofd_connector, ofd_margins, partial_l2
from letkd.methods.reviewkd import ReviewFusion, hcl_loss
from letkd.models import create_model
from letkd.models.tap_names import preact_batchnorms, preact_stages

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ref(fixtures_dir) -> dict[str, np.ndarray]:
    with np.load(fixtures_dir / "modern_methods_reference.npz") as z:
        return {k: z[k] for k in z.files}


def _t(ref, key: str, grad: bool = False) -> torch.Tensor:
    return torch.from_numpy(ref[key].copy()).requires_grad_(grad)


def _close(actual, expected: np.ndarray) -> None:
    """The fixture's tolerance (rtol 1e-4, atol 1e-5), atol scaled up for arrays of large magnitude."""
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    assert actual.shape == expected.shape
    atol = max(1e-5, 1e-5 * float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=atol)


def _settings(ref, pattern: str) -> list[tuple[str, tuple[float, ...]]]:
    """``(prefix, numbers)`` of every entry named like ``pattern`` (e.g. ``dist_b2_g2_t4/loss``)."""
    found = [(k.rsplit("/", 1)[0], re.fullmatch(pattern, k)) for k in ref]
    out = [(prefix, tuple(float(g) for g in m.groups())) for prefix, m in found if m]
    assert out, f"no entry named like {pattern} in the fixture"
    return sorted(out)


def _state(ref, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: torch.from_numpy(v.copy()) for k, v in ref.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------------ logits


def test_dist_loss_and_gradient(ref):
    for prefix, (beta, gamma, tau) in _settings(ref, r"dist_b([\d.]+)_g([\d.]+)_t([\d.]+)/loss"):
        student, teacher = _t(ref, "logits_student", grad=True), _t(ref, "logits_teacher")
        loss = dist_loss(student, teacher, beta, gamma, tau)
        _close(loss, ref[f"{prefix}/loss"])
        loss.backward()
        _close(student.grad, ref[f"{prefix}/grad_student"])


def test_lskd_loss_and_gradient(ref):
    for prefix, (temperature,) in _settings(ref, r"lskd_T([\d.]+)/loss"):
        student, teacher = _t(ref, "logits_student", grad=True), _t(ref, "logits_teacher")
        loss = kd_loss(*standardized_pair(student, teacher, logit_stand=True), temperature)
        _close(loss, ref[f"{prefix}/loss"])
        loss.backward()
        _close(student.grad, ref[f"{prefix}/grad_student"])
        plain = kd_loss(*standardized_pair(student, teacher, logit_stand=False), temperature)
        assert not np.isclose(plain.item(), ref[f"{prefix}/loss"], rtol=1e-3)  # the option changes the loss


# ---------------------------------------------------------------------------------------------- ReviewKD


def _student_levels(ref) -> list[str]:
    return sorted((k for k in ref if re.fullmatch(r"reviewkd/student_f\d+", k)), key=lambda k: int(k[18:]))


def test_reviewkd_abf_outputs_hcl_gradients_and_bn_statistics(ref):
    p = "reviewkd/"
    stages = [_t(ref, k, grad=True) for k in _student_levels(ref)]
    pooled = stages[-1].mean((2, 3))[:, :, None, None]
    _close(pooled.squeeze(-1).squeeze(-1), ref[f"{p}student_pooled"])
    teachers = [k for k in ref if re.fullmatch(rf"{p}teacher_preact_f\d+", k)]
    teachers.sort(key=lambda k: int(k[25:]))
    targets = [_t(ref, k) for k in teachers] + [_t(ref, f"{p}teacher_pooled")[:, :, None, None]]
    in_channels, out_channels = ref[f"{p}in_channels"].tolist(), ref[f"{p}out_channels"].tolist()
    assert out_channels == [t.shape[1] for t in targets]
    assert ref[f"{p}out_shapes"].tolist() == [t.shape[-1] for t in targets][::-1]  # pooled level first
    assert ref[f"{p}shapes"].tolist() == [*(s.shape[-1] for s in stages[-len(targets) + 1 :]), 1][::-1]

    levels = [*stages, pooled]
    assert in_channels == [x.shape[1] for x in levels[-len(targets) :]]

    fusion = ReviewFusion(in_channels, out_channels)
    fusion.load_state_dict({k: v for k, v in _state(ref, p).items() if k.startswith("abfs.")}, strict=True)
    fusion.train()
    outputs = fusion(levels, [t.shape[-2:] for t in targets])
    for i, out in enumerate(outputs):
        _close(out, ref[f"{p}result_{i}"])
    loss = hcl_loss(outputs, targets)
    _close(loss, ref[f"{p}hcl_loss"])
    loss.backward()
    for key, stage in zip(_student_levels(ref), stages):
        grad = stage.grad if stage.grad is not None else torch.zeros_like(stage)  # levels the stack drops
        _close(grad, ref[key.replace("student_f", "grad_student_f")])
    after = {k[len(f"{p}after/") :]: v for k, v in ref.items() if k.startswith(f"{p}after/")}
    assert after
    state = fusion.state_dict()
    for key, value in after.items():
        _close(state[key], value)


# --------------------------------------------------------------------------------------------------- OFD


def _levels(ref, name: str) -> list[str]:
    keys = [k for k in ref if re.fullmatch(rf"ofd/{name}\d+", k)]
    return sorted(keys, key=lambda k: int(re.search(r"(\d+)$", k)[1]))


def test_ofd_margins_loss_gradients_and_bn_statistics(ref):
    p = "ofd/"
    margin_keys = _levels(ref, "margin")
    margins = [ofd_margins(_t(ref, f"{p}teacher_bn{i}_weight"), _t(ref, f"{p}teacher_bn{i}_bias"))
               for i in range(len(margin_keys))]  # fmt: skip
    for margin, key in zip(margins, margin_keys):
        _close(margin, ref[key])
    students = [_t(ref, k, grad=True) for k in _levels(ref, "student_preact")]
    teachers = [_t(ref, k) for k in _levels(ref, "teacher_preact")]
    assert len(students) == len(teachers) == len(margins)
    connectors = nn.ModuleList(ofd_connector(s.shape[1], t.shape[1]) for s, t in zip(students, teachers))
    connectors.load_state_dict(_state(ref, f"{p}connectors.connectors."), strict=True)
    connectors.train()
    n = len(students)
    loss = sum(
        partial_l2(conn(s), nn.functional.adaptive_avg_pool2d(t, s.shape[-2:]), m) / 2 ** (n - 1 - i)
        for i, (conn, s, t, m) in enumerate(zip(connectors, students, teachers, margins))
    )
    _close(loss, ref[f"{p}loss"])
    loss.backward()
    for s, key in zip(students, _levels(ref, "student_preact")):
        _close(s.grad, ref[key.replace("student_preact", "grad_student_preact")])
    after = _state(ref, f"{p}after/connectors.connectors.")
    assert after
    state = connectors.state_dict()
    for key, value in after.items():
        _close(state[key], value.numpy())


def test_ofd_margin_edge_cases():
    weight = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.1])
    bias = torch.tensor([0.0, 0.0, 2.0, -2.0, 5.0])
    margins = ofd_margins(weight, bias)
    expected_zero_mean = -2 / np.sqrt(2 * np.pi)  # E[x | x < 0] · P(x < 0) / P(x < 0) for N(0, 1)
    torch.testing.assert_close(margins[:2], torch.full((2,), expected_zero_mean, dtype=torch.float32))
    torch.testing.assert_close(margins[2:], torch.tensor([0.0, -2.0, -0.3]))  # γ = 0: min(β, 0); rare: −3|γ|


# ------------------------------------------------------------------------------------------ the methods


def _distiller(name: str, params: dict, teacher: str = "resnet8", fold: bool = False, size: int = 8):
    torch.manual_seed(0)
    context = MethodContext(5, (3, size, size), fold_teacher_batchnorm=fold, teacher_channels_last=False)
    return get_method(name).from_config(create_model("resnet8", 5), create_model(teacher, 5), params, context)


def _batch(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(6, 3, size, size, generator=g), torch.arange(6) % 5


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_logit_stand_standardizes_both_logits_for_the_kd_term_only(name):
    images, labels = _batch()
    plain, stand = _distiller(name, {}), _distiller(name, {"logit_stand": True})
    stand.load_state_dict(plain.state_dict())
    with torch.no_grad():
        logits, losses = stand.train().forward_train(images, labels)
        _, plain_losses = plain.train().forward_train(images, labels)
        s, t = standardized_pair(logits, stand.teacher.logits(images), logit_stand=True)
    p = stand.params
    expected = kd_loss(s, t, p.temperature) * p.kd_weight if name == "kd" else (
        stand.warmup_factor() * dkd_loss(s, t, labels, p.alpha, p.beta, p.temperature))  # fmt: skip
    torch.testing.assert_close(losses["loss_kd"], expected)
    torch.testing.assert_close(losses["loss_ce"], plain_losses["loss_ce"])  # CE sees the raw logits
    assert not torch.isclose(losses["loss_kd"], plain_losses["loss_kd"])
    torch.testing.assert_close(s.std(dim=1), torch.ones(len(s)), rtol=1e-4, atol=1e-4)


def test_dist_method_is_the_dist_loss():
    d = _distiller("dist", {"beta": 1.5, "gamma": 0.5, "temperature": 3.0})
    images, labels = _batch()
    with torch.no_grad():
        logits, losses = d.train().forward_train(images, labels)
        expected = dist_loss(logits, d.teacher.logits(images), 1.5, 0.5, 3.0)
    torch.testing.assert_close(losses["loss_kd"], expected)


def test_reviewkd_levels_warm_up_and_student_preact():
    d = _distiller("reviewkd", {"warmup": 4})
    assert d.student_paths == ["layer1", "layer2", "layer3", "layer3"]  # stages, then the pooled level
    assert d.teacher_paths == [*preact_stages(d.teacher.module), "layer3"]
    images, labels = _batch()
    with torch.no_grad():
        weights = []
        for epoch in (0, 1, 3, 9):
            d.set_epoch(epoch)
            weights.append(d.train().forward_train(images, labels)[1]["loss_kd"])
    torch.testing.assert_close(torch.stack(weights) / weights[-1], torch.tensor([0.25, 0.5, 1.0, 1.0]))
    pre = _distiller("reviewkd", {"student_preact": True})
    assert pre.student_paths == [*preact_stages(pre.student), "layer3"]


def test_levels_pair_from_the_deepest_when_stage_counts_differ():
    d = _distiller("ofd", {}, teacher="ResNet18", size=16)  # 4 teacher stages, 3 student stages
    assert d.teacher_paths == preact_stages(d.teacher.module)[1:]
    assert d.pair_weights == [0.25, 0.5, 1.0]
    r = _distiller("reviewkd", {}, teacher="ResNet18", size=16)
    assert r.teacher_paths[:-1] == preact_stages(r.teacher.module)[1:]


def test_ofd_margins_come_from_the_teacher_batchnorms_before_folding():
    torch.manual_seed(3)
    teacher = create_model("resnet8", 5)
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(-2, 2), m.bias.data.normal_()
    expected = [ofd_margins(teacher.get_submodule(p).weight, teacher.get_submodule(p).bias)
                for p in preact_batchnorms(teacher)]  # fmt: skip
    context = MethodContext(5, (3, 8, 8), fold_teacher_batchnorm=True, teacher_channels_last=False)
    d = get_method("ofd").from_config(create_model("resnet8", 5), teacher, {}, context)
    assert set(preact_batchnorms(teacher)) <= set(d.teacher.folded)  # folded away after the margins
    for margin, exp in zip(d.margins, expected):
        torch.testing.assert_close(margin, exp)
    images, labels = _batch()
    _, losses = d.train().forward_train(images, labels)
    losses["loss_kd"].backward()
    assert all(c[0].weight.grad is not None for c in d.connectors)


def test_ofd_explicit_taps_need_their_batchnorms():
    taps = {
        "student_taps": ["layer2.0.preact", "layer3.0.preact"],
        "teacher_taps": ["stage2_preact", "stage3_preact"],
    }
    with pytest.raises(ConfigError, match="name the BatchNorm before each in teacher_batchnorms"):
        _distiller("ofd", taps)
    with pytest.raises(ConfigError, match="is not a BatchNorm2d feeding the 32 channels"):
        _distiller("ofd", taps | {"teacher_batchnorms": ["layer3.0.bn2", "layer3.0.bn2"]})
    d = _distiller("ofd", taps | {"teacher_batchnorms": ["layer2.0.bn2", "layer3.0.bn2"]})
    assert [m.shape[0] for m in d.margins] == [32, 64]
