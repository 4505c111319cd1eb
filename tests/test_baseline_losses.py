"""Baseline KD losses against the reference loss zoos (fixtures) and against plain numpy re-derivations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from letkd.methods import losses

RTOL = 1e-5


def _t(ref: dict[str, np.ndarray], key: str) -> torch.Tensor:
    return torch.from_numpy(ref[key])


@pytest.mark.parametrize("temperature,key", [(4.0, "kd_T4"), (1.0, "kd_T1")])
def test_kd_loss_matches_reference(loss_ref, temperature, key):
    got = losses.kd_loss(_t(loss_ref, "logits_student"), _t(loss_ref, "logits_teacher"), temperature)
    np.testing.assert_allclose(got.item(), loss_ref[key], rtol=RTOL)


def test_at_loss_matches_reference_per_pair(loss_ref):
    got = [losses.at_loss(_t(loss_ref, f"feat_student_{i}"), _t(loss_ref, f"feat_teacher_{i}"), p=2).item()
           for i in range(2)]
    np.testing.assert_allclose(got, loss_ref["at_p2"], rtol=RTOL)


def test_sp_loss_matches_reference_per_pair(loss_ref):
    got = [losses.sp_loss(_t(loss_ref, f"feat_student_{i}"), _t(loss_ref, f"feat_teacher_{i}")).item()
           for i in range(2)]
    np.testing.assert_allclose(got, loss_ref["sp"], rtol=RTOL)


@pytest.mark.parametrize("beta,key", [(8.0, "dkd_a1_b8_T4"), (2.0, "dkd_a1_b2_T4")])
def test_dkd_loss_matches_reference(loss_ref, beta, key):
    got = losses.dkd_loss(_t(loss_ref, "logits_student"), _t(loss_ref, "logits_teacher"),
                          _t(loss_ref, "labels"), alpha=1.0, beta=beta, temperature=4.0)
    np.testing.assert_allclose(got.item(), loss_ref[key], rtol=RTOL)


def test_pkt_rkd_nst_match_reference(loss_ref):
    s, t = _t(loss_ref, "embed_student"), _t(loss_ref, "embed_teacher")
    np.testing.assert_allclose(losses.pkt_loss(s, t).item(), loss_ref["pkt"], rtol=RTOL)
    np.testing.assert_allclose(losses.rkd_loss(s, t, 25.0, 50.0).item(), loss_ref["rkd_w25_w50"], rtol=RTOL)
    nst = [losses.nst_loss(_t(loss_ref, f"feat_student_{i}"), _t(loss_ref, f"feat_teacher_{i}")).item()
           for i in range(2)]
    np.testing.assert_allclose(nst, loss_ref["nst"], rtol=RTOL)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_dkd_equals_explicit_tckd_plus_nckd():
    """Re-derive DKD by removing the target column (no masking trick) in float64."""
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(6, 7)) * 3, rng.normal(size=(6, 7)) * 3
    y = rng.integers(0, 7, size=6)
    temperature, alpha, beta = 2.0, 0.7, 3.0
    ps, pt = _softmax(s / temperature), _softmax(t / temperature)
    rows = np.arange(6)
    bs = np.stack([ps[rows, y], 1 - ps[rows, y]], 1)
    bt = np.stack([pt[rows, y], 1 - pt[rows, y]], 1)
    tckd = (bt * np.log(bt / bs)).sum() / 6 * temperature**2
    keep = np.ones_like(s, dtype=bool)
    keep[rows, y] = False
    qs = _softmax((s / temperature)[keep].reshape(6, 6))
    qt = _softmax((t / temperature)[keep].reshape(6, 6))
    nckd = (qt * np.log(qt / qs)).sum() / 6 * temperature**2
    got = losses.dkd_loss(torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64),
                          torch.tensor(y), alpha, beta, temperature)
    np.testing.assert_allclose(got.item(), alpha * tckd + beta * nckd, rtol=1e-6)


def test_at_pools_the_larger_grid_and_zero_for_identical_maps():
    f = torch.rand(2, 4, 8, 8)
    assert losses.at_loss(f, f.clone()).item() == 0.0
    small = torch.nn.functional.adaptive_avg_pool2d(f, 4)
    assert losses.at_loss(f, small * 3).item() == pytest.approx(0.0, abs=1e-12)  # scale-free, pooled
    assert losses.at_loss(torch.rand(2, 4, 8, 8), torch.rand(2, 6, 4, 4)).item() > 0


def test_kd_loss_gradient_only_for_student():
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5)
    losses.kd_loss(s, t, 4.0).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert losses.kd_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
