"""Codebook (letKD-1 / QuEST teacher targets): fixture parity, soft assignment, K-means fit, chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from letkd.supervision.codebook import Codebook, fit_codebook, softmax_rows_
from letkd.supervision.kmeans import nearest_center


@pytest.mark.parametrize(
    "temp_key, target_key",
    [("pen/temperature", "pen/teacher_targets_BHWK"), (0.3, "pen/teacher_targets_T0.3_BHWK")],
)
def test_targets_match_reference(layer_ref, temp_key, target_key):
    temperature = float(layer_ref[temp_key]) if isinstance(temp_key, str) else temp_key
    codebook = Codebook(layer_ref["pen/centroids"], temperature=temperature)
    out = codebook(torch.from_numpy(layer_ref["pen/teacher_features"]))
    expected = torch.from_numpy(layer_ref[target_key]).permute(0, 3, 1, 2)  # (B,H,W,K) -> (B,K,H,W)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_targets_equal_softmax_of_cdist():
    centers = torch.randn(10, 6) * 2
    feats = torch.randn(3, 6, 5, 4)
    codebook = Codebook(centers, temperature=0.7)
    flat = feats.permute(0, 2, 3, 1).reshape(-1, 6).double()
    expected = torch.softmax(-0.7 * torch.cdist(flat, centers.double()) ** 2, dim=1)
    out = codebook.targets(feats)
    torch.testing.assert_close(
        out.permute(0, 2, 3, 1).reshape(-1, 10).double(), expected, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(out.sum(1), torch.ones(3, 5, 4))
    assert not out.requires_grad


def test_codebook_is_a_module_with_buffers():
    codebook = Codebook(np.ones((4, 3)), cluster_sizes=np.arange(4))
    assert set(codebook.state_dict()) == {"centers", "cluster_sizes"}
    assert codebook.centers.dtype == torch.float32 and codebook.cluster_sizes.dtype == torch.int64
    assert list(codebook.parameters()) == []
    with pytest.raises(ValueError, match="channels"):
        codebook.targets(torch.zeros(1, 5, 2, 2))


@pytest.mark.parametrize("chunk, buffer", [(1, 1000), (7, 1000), (64, 1000), (1000, 1000), (1000, 30)])
def test_nearest_center_keeps_remainder_rows(chunk, buffer):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(131, 5)).astype(np.float32)  # 131 is prime: never a multiple of the chunk
    c = rng.normal(size=(9, 5)).astype(np.float32)
    idx, d2 = nearest_center(x, c, chunk_size=chunk, max_buffer=buffer)  # buffer 30 → 3 rows a chunk
    brute = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(idx, brute.argmin(1))
    np.testing.assert_allclose(d2, brute.min(1), rtol=1e-4, atol=1e-5)


def _blobs(n_per: int, centers: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = [c + 0.05 * rng.normal(size=(n_per, centers.shape[1])) for c in centers]
    return np.concatenate(pts).astype(np.float32)


def test_fit_codebook_converges_and_counts_all_rows():
    true = np.eye(6, dtype=np.float32) * 5
    rows = _blobs(167, true)  # 1002 rows, not a multiple of the chunk below
    codebook = fit_codebook(
        rows, num_centers=6, iters=20, seed=1, max_points_per_centroid=None, progress=False, chunk_size=100
    )
    centers, sizes = codebook.centers.numpy(), codebook.cluster_sizes.numpy()
    assert sizes.sum() == len(rows) and (sizes > 0).all()
    # a converged Lloyd solution: every centre is the mean of the rows assigned to it
    idx = ((rows[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(sizes, np.bincount(idx, minlength=6))
    for k in range(6):
        np.testing.assert_allclose(centers[k], rows[idx == k].mean(0), atol=1e-4)
    objective = ((rows - centers[idx]) ** 2).sum(1).mean()
    assert codebook.fit_info["kmeans_objective"] == pytest.approx(objective, rel=1e-4)
    stats = codebook.fit_info["cluster_sizes"]
    assert (stats["min"], stats["max"], stats["empty"]) == (sizes.min(), sizes.max(), 0)


def test_fit_codebook_is_deterministic_given_seed():
    rows = np.random.default_rng(3).normal(size=(900, 4)).astype(np.float32)
    a = fit_codebook(rows, num_centers=8, iters=5, seed=7, progress=False)
    b = fit_codebook(rows, num_centers=8, iters=5, seed=7, progress=False)
    torch.testing.assert_close(a.centers, b.centers)
    # the sizes agree with an independent assignment of every row
    idx = ((rows[:, None] - a.centers.numpy()[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(a.cluster_sizes.numpy(), np.bincount(idx, minlength=8))


def test_softmax_rows_in_place_equals_torch_softmax():
    x = torch.randn(37, 300) * 30
    expected = torch.softmax(x, dim=1)
    out = softmax_rows_(x)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=1e-6)


def test_targets_into_a_buffer_equal_fresh_targets_and_bad_buffers_are_refused():
    cb = Codebook(torch.rand(16, 4) * 3, temperature=0.7)
    feats = torch.rand(2, 4, 3, 5)
    fresh = cb.targets(feats).clone()
    buffer = torch.full((2 * 3 * 5, 16), float("nan"))
    again = cb.targets(feats, out=buffer)
    assert again.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(again, fresh)
    with pytest.raises(ValueError, match="shape"):
        cb.targets(feats, out=torch.empty(29, 16))
    with pytest.raises(ValueError, match="float32"):
        cb.targets(feats, out=torch.empty(30, 16, dtype=torch.float64))
