"""The fused template KL (``letkd.template_loss``): targets computed a chunk of locations at a time from the
teacher side (codebook logits, sub-class table rows) against the reference fixtures, and its gradient
against autograd through the unfused loss in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from letkd import template_loss
from letkd.supervision.codebook import Codebook
from letkd.supervision.subclass import SubclassCodebook
from letkd.template_loss import CodebookTargets, TableTargets, template_kl

TOL = {"atol": 1e-4, "rtol": 1e-4}


def t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array))


def unfused_kl(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss as plain autograd computes it: Σ xlogy(P, P) − P · log_softmax(a), over B·H·W rows."""
    log_q = F.log_softmax(scores, dim=1)
    return (torch.xlogy(targets, targets) - targets * log_q).sum() / (scores.numel() // scores.shape[1])


def _subclass(layer_ref) -> SubclassCodebook:
    return SubclassCodebook(
        layer_ref["int/lda_scalings"],
        layer_ref["int/lda_xbar"],
        layer_ref["int/subclass_centers"],
        layer_ref["int/score_matrix"],
        num_classes=int(layer_ref["int/num_classes"]),
    )


@pytest.fixture(params=[2**18, 50], ids=["one-chunk", "many-chunks"])
def chunk(request, monkeypatch):
    """The default chunk size, and one that splits the fixtures into several chunks with a partial last."""
    monkeypatch.setattr(template_loss, "CHUNK_ELEMENTS", request.param)
    return request.param


def test_codebook_targets_give_the_reference_loss(layer_ref, chunk):
    scores = t(layer_ref["pen/scores"])
    targets = CodebookTargets(
        t(layer_ref["pen/teacher_features"]),
        t(layer_ref["pen/centroids"]),
        float(layer_ref["pen/temperature"]),
    )
    loss = template_kl(scores, targets)
    torch.testing.assert_close(loss.double(), t(layer_ref["pen/kl_loss"]), **TOL)
    # the targets it builds are the fixture's soft assignments
    targets.prepare(torch.float32, 1.0)
    k = scores.shape[1]
    probs, log_probs = torch.empty(targets.num_rows, k), torch.empty(targets.num_rows, k)
    targets.fill(0, targets.num_rows, probs, log_probs)
    expected = t(layer_ref["pen/teacher_targets_BHWK"]).reshape(-1, k)
    torch.testing.assert_close(probs, expected, **TOL)
    torch.testing.assert_close(log_probs.exp(), expected, **TOL)


def test_table_targets_give_the_reference_loss(layer_ref, chunk):
    scores = t(layer_ref["int/scores"])
    subclass = _subclass(layer_ref)
    index = subclass.assign(t(layer_ref["int/teacher_features"]), t(layer_ref["int/labels"]))
    loss = template_kl(scores, TableTargets(subclass.score_matrix, index))
    torch.testing.assert_close(loss.double(), t(layer_ref["int/kl_loss"]), **TOL)


def _float64_case(g: torch.Generator):
    """Scores (B, K, H, W), teacher features, centres, τ, a table and an index, all float64."""
    b, k, h, w, d = 3, 7, 2, 5, 4
    scores = (torch.randn(b, h, w, k, generator=g, dtype=torch.float64) * 3).permute(0, 3, 1, 2)
    features = torch.rand(b, d, h, w, generator=g, dtype=torch.float64) * 2
    centers = torch.rand(k, d, generator=g, dtype=torch.float64) * 2
    table = torch.softmax(torch.randn(k, k, generator=g, dtype=torch.float64) * 4, dim=1)
    table[2] = 0
    table[2, 5] = 1  # a one-hot row: 0 · log 0 terms
    index = torch.randint(0, k, (b * h * w,), generator=g)
    return scores, features, centers, 2.5, table, index


def test_fused_gradient_equals_autograd_through_the_unfused_loss_in_float64(chunk):
    scores, features, centers, tau, table, index = _float64_case(torch.Generator().manual_seed(0))
    rows = features.movedim(1, -1).reshape(-1, features.shape[1])
    logits = tau * (2 * rows @ centers.T - (centers * centers).sum(1))
    b, k, h, w = scores.shape
    as_map = lambda r: r.reshape(b, h, w, k).permute(0, 3, 1, 2)  # noqa: E731
    cases = [
        (CodebookTargets(features, centers, tau), as_map(torch.softmax(logits, dim=1))),
        (TableTargets(table, index), as_map(table[index])),
    ]
    cases.append((cases[1][1].clone(), cases[1][1]))  # a map given as a tensor
    for fused_targets, dense in cases:
        a = scores.detach().clone().requires_grad_(True)
        fused = template_kl(a, fused_targets)
        (grad,) = torch.autograd.grad(fused, a)
        b_ = scores.detach().clone().requires_grad_(True)
        expected = unfused_kl(b_, dense)
        (expected_grad,) = torch.autograd.grad(expected, b_)
        assert fused.dtype == torch.float64
        torch.testing.assert_close(fused, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-13)


def test_gradcheck_of_the_fused_codebook_loss():
    scores, features, centers, tau, *_ = _float64_case(torch.Generator().manual_seed(1))
    targets = CodebookTargets(features, centers, tau)
    assert torch.autograd.gradcheck(lambda s: template_kl(s, targets), (scores.requires_grad_(True),))


def test_weight_in_front_of_the_loss_scales_the_gradient():
    scores, features, centers, tau, *_ = _float64_case(torch.Generator().manual_seed(2))
    targets = CodebookTargets(features, centers, tau)
    a = scores.detach().clone().requires_grad_(True)
    template_kl(a, targets).backward()
    b = scores.detach().clone().requires_grad_(True)
    (2.5 * template_kl(b, targets)).backward()
    torch.testing.assert_close(b.grad, 2.5 * a.grad)


def test_half_precision_scores_compute_in_float32_and_return_their_dtype():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 9, 3, 3, generator=g)
    cb = Codebook(torch.rand(9, 5, generator=g))
    features = torch.rand(2, 5, 3, 3, generator=g)
    half = scores.to(torch.bfloat16).requires_grad_(True)
    loss = template_kl(half, CodebookTargets(features, cb.centers, 1.0))
    loss.backward()
    assert loss.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    expected = template_kl(half.detach().float(), cb.targets(features))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_targets_of_another_shape_are_refused():
    scores = torch.randn(2, 9, 3, 3)
    features = torch.rand(2, 5, 4, 3)  # 24 locations, the scores have 18
    with pytest.raises(ValueError, match=r"18 locations × 9 templates, the targets 24 × 9"):
        template_kl(scores, CodebookTargets(features, torch.rand(9, 5), 1.0))
    with pytest.raises(ValueError, match="channels"):
        CodebookTargets(features, torch.rand(9, 4), 1.0)
