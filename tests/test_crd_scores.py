"""CRD's scores of sampled memory rows without gathering them (``letkd.methods.crd``): both scoring paths
against the gathered-rows computation, with repeated samples, and the backward's use of the banks as they
were before the call's update."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from letkd.methods import crd
from letkd.methods.crd import ContrastMemory
from letkd.methods.losses import contrast_loss


def _gathered_scores(memory: ContrastMemory, e_s, e_t, contrast_index):
    """The scores from the gathered (B, K+1, D) rows, as the reference implementation computes them."""
    rows_v1, rows_v2 = memory.memory_v1[contrast_index], memory.memory_v2[contrast_index]
    s = torch.exp(torch.bmm(rows_v2, e_s.unsqueeze(2)).squeeze(2) / memory.temperature)
    t = torch.exp(torch.bmm(rows_v1, e_t.unsqueeze(2)).squeeze(2) / memory.temperature)
    return s, t


def _case(seed: int, n: int = 40, b: int = 6, k: int = 30, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    memory = ContrastMemory(d, n, temperature=0.1, momentum=0.5)
    e_s = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    e_t = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    memory = memory.double()
    index = torch.randperm(n, generator=g)[:b]
    negatives = torch.randint(0, n, (b, k), generator=g)  # k ≈ n: many repeated samples per row
    negatives[0, :5] = negatives[0, 5]
    return memory, e_s, e_t, index, torch.cat([index[:, None], negatives], 1)


@pytest.mark.parametrize("dense", [True, False])
def test_scores_and_gradients_equal_the_gathered_rows(dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(crd, "DENSE_ROWS_PER_COLUMN", 0)
        monkeypatch.setattr(crd, "GATHER_CHUNK_ELEMENTS", 100)  # several chunks of anchors
    memory, e_s, e_t, index, contrast_index = _case(0)
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    a_s, a_t = e_s.clone().requires_grad_(True), e_t.clone().requires_grad_(True)
    out_s, out_t = memory(a_s, a_t, index, contrast_index)
    loss = contrast_loss(out_s, memory.num_data) + 2 * contrast_loss(out_t, memory.num_data)
    loss.backward()

    reference = ContrastMemory(e_s.shape[1], memory.num_data, 0.1, 0.5).double()
    reference.load_state_dict(before)
    b_s, b_t = e_s.clone().requires_grad_(True), e_t.clone().requires_grad_(True)
    s, t = _gathered_scores(reference, b_s, b_t, contrast_index)
    z = torch.stack([s.mean(), t.mean()]).detach() * memory.num_data
    expected = contrast_loss(s / z[0], memory.num_data) + 2 * contrast_loss(t / z[1], memory.num_data)
    expected.backward()

    torch.testing.assert_close(out_s, s.detach() / z[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(a_s.grad, b_s.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(a_t.grad, b_t.grad, rtol=1e-10, atol=1e-14)
    # the banks hold the update (the backward put its temporary rows back)
    assert not torch.equal(memory.memory_v1[index], before["memory_v1"][index])
    rest = torch.ones(memory.num_data, dtype=torch.bool)
    rest[index] = False
    assert torch.equal(memory.memory_v1[rest], before["memory_v1"][rest])
    expected_rows = F.normalize(before["memory_v1"][index] * 0.5 + e_s * 0.5, dim=1)
    torch.testing.assert_close(memory.memory_v1[index], expected_rows)


def test_a_bank_changed_before_the_backward_is_refused():
    memory, e_s, e_t, index, contrast_index = _case(1)
    e_s.requires_grad_(True)
    out_s, _ = memory(e_s, e_t, index, contrast_index)
    memory.memory_v2.mul_(1.0)  # e.g. a second call's update (which also changes z)
    with pytest.raises(RuntimeError, match="memory bank changed between a forward pass and its backward"):
        contrast_loss(out_s, memory.num_data).backward()


def test_the_dense_path_is_chosen_for_small_banks_only():
    idx = torch.randint(0, 50_000, (64, 16385))
    positions = crd.dense_positions(50_000, idx)  # CIFAR-100
    assert positions is not None and torch.equal(positions.view(64, -1) % 50_000, idx)
    assert crd.dense_positions(1_281_167, idx) is None  # ImageNet: gathered rows


@pytest.mark.parametrize("dense", [True, False])
def test_half_precision_embeddings_score_in_float32(dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(crd, "DENSE_ROWS_PER_COLUMN", 0)
    memory, e_s, e_t, index, contrast_index = _case(2)
    memory = memory.float()
    a_s = e_s.to(torch.bfloat16).requires_grad_(True)
    a_t = e_t.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_s, out_t = memory(a_s, a_t, index, contrast_index)
        loss = contrast_loss(out_s, memory.num_data) + contrast_loss(out_t, memory.num_data)
    loss.float().backward()
    assert out_s.dtype == torch.float32 and torch.isfinite(loss)
    assert a_s.grad.dtype == torch.bfloat16 and torch.isfinite(a_s.grad).all()
