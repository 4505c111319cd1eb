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

from letkd.methods.kd import standardized_pair
from letkd.methods.losses import dist_loss, kd_loss
from letkd.methods.ofd import ofd_connector, ofd_margins, partial_l2
from letkd.methods.reviewkd import ReviewFusion, hcl_loss

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
