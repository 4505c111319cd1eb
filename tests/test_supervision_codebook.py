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


@pytest.fixture(scope="module")
def mixture() -> np.ndarray:
    """30,000 rows of 200 overlapping Gaussian clusters in 16 dims (class-structured teacher features)."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(200, 16)) * 1.5
    return (means[rng.integers(0, 200, 30000)] + rng.normal(size=(30000, 16))).astype(np.float32)


def test_torch_kmeans_matches_faiss_objective(mixture, one_thread):
    """The device K-means (run here on the CPU, as CI does) against faiss: same rows, same seeds."""
    from letkd.supervision.kmeans import train_kmeans, train_kmeans_torch

    ratios, first = [], None
    for seed in range(3):
        ref = nearest_center(mixture, train_kmeans(mixture, 64, iters=20, seed=seed, threads=1))[1].mean()
        centers, info = train_kmeans_torch(mixture, 64, iters=20, seed=seed, device="cpu")
        first = centers if first is None else first
        ratios.append(nearest_center(mixture, centers)[1].mean() / ref)
        assert ratios[-1] < 1.01, (seed, ratios)  # never more than 1 % worse than faiss
        assert info["train_rows"] == 64 * 256 and len(info["objective_per_iter"]) == 20
        assert info["objective_per_iter"][-1] <= info["objective_per_iter"][1]
    assert abs(np.mean(ratios) - 1) < 0.01, ratios
    book = fit_codebook(mixture, 64, iters=20, seed=0, kmeans="torch", progress=False)
    np.testing.assert_array_equal(book.centers.numpy(), first)  # seeded: the same centres again
    assert book.fit_info["kmeans_backend"] == "torch-cpu" and int(book.cluster_sizes.sum()) == len(mixture)


def test_torch_kmeans_splits_empty_clusters_and_reads_float16_rows():
    from letkd.supervision.kmeans import train_kmeans_torch

    rows = np.repeat(np.eye(4, dtype=np.float32) * 10, 50, axis=0)  # 4 distinct points, 6 centres
    rows += np.random.default_rng(0).normal(scale=0.01, size=rows.shape).astype(np.float32)
    centers, info = train_kmeans_torch(rows.astype(np.float16), 6, iters=5, seed=1)
    assert centers.dtype == np.float32 and centers.shape == (6, 4) and np.isfinite(centers).all()
    assert info["empty_splits"] > 0  # duplicates of one point leave clusters empty: they are split
    assert info["objective_per_iter"][-1] < 1e-2


def test_float16_storage_leaves_the_kmeans_fit_unchanged(mixture):
    """Rows rounded to float16 (how samples are stored) give the same K-means within 0.1 %."""
    full = fit_codebook(mixture, 64, iters=20, seed=0, progress=False)
    half = fit_codebook(mixture.astype(np.float16), 64, iters=20, seed=0, progress=False)
    on_full_rows = nearest_center(mixture, half.centers)[1].mean()
    assert abs(on_full_rows / full.fit_info["kmeans_objective"] - 1) < 1e-3
