"""Sub-class supervision (letKD-2): streamed LDA = scikit-learn, targets vs the reference, score matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from letkd.supervision.lda import fit_lda, lda_transform
from letkd.supervision.subclass import SubclassCodebook, fit_subclasses, score_matrix_from_assignments


def _labelled(n: int, d: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(size=(c, d))[y] * 2 + rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 3
    return x, y


def _assert_equal_up_to_sign(ours: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    assert ours.shape == ref.shape
    sign = np.sign((ours * ref).sum(0))
    np.testing.assert_allclose(ours * sign, ref, atol=rtol * np.abs(ref).max())


@pytest.mark.parametrize(
    "n, d, c, chunk", [(500, 5, 3, 64), (3001, 20, 7, 1000), (4000, 48, 10, 777), (2000, 30, 40, 333)]
)
def test_lda_equals_sklearn(n, d, c, chunk):
    x, y = _labelled(n, d, c, seed=d)
    ref = LinearDiscriminantAnalysis(solver="svd").fit(x, y)
    scalings, xbar = fit_lda(x, y, c, chunk_size=chunk)
    np.testing.assert_allclose(xbar, ref.xbar_, atol=1e-10)
    assert scalings.shape == ref.scalings_.shape
    _assert_equal_up_to_sign(((x - xbar) @ scalings)[:, : ref.transform(x).shape[1]], ref.transform(x), 1e-8)


def test_lda_rank_deficient_and_absent_classes():
    x, y = _labelled(1000, 12, 5, seed=1)
    x[:, 3] = 2 * x[:, 1] + x[:, 2]  # collinear column
    x[:, 5] = 7.0  # constant column (zero within-class std)
    ref = LinearDiscriminantAnalysis().fit(x, y)
    scalings, xbar = fit_lda(x, y, num_classes=7, chunk_size=300)  # classes 5 and 6 have no rows
    assert scalings.shape == ref.scalings_.shape
    _assert_equal_up_to_sign((x - xbar) @ scalings, ref.transform(x), 1e-8)


def test_lda_transform_float32_chunks():
    x, y = _labelled(1001, 8, 4, seed=2)
    scalings, xbar = fit_lda(x, y, 4)
    z = lda_transform(x.astype(np.float32), scalings, xbar, chunk_size=100)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, (x - xbar) @ scalings, rtol=1e-4, atol=1e-4)


def test_targets_match_reference(layer_ref):
    module = SubclassCodebook(
        layer_ref["int/lda_scalings"],
        layer_ref["int/lda_xbar"],
        layer_ref["int/subclass_centers"],
        layer_ref["int/score_matrix"],
        num_classes=int(layer_ref["int/num_classes"]),
    )
    assert module.subclasses_per_class == int(layer_ref["int/subclasses_per_class"])
    out = module(
        torch.from_numpy(layer_ref["int/teacher_features"]), torch.from_numpy(layer_ref["int/labels"])
    )
    assert out.shape == (4, 40, 4, 4)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 40)
    torch.testing.assert_close(
        flat, torch.from_numpy(layer_ref["int/teacher_targets_BHW_x_S"]), atol=1e-4, rtol=1e-4
    )


def _random_module(d: int, r: int, c: int, k: int, lda_dims: int, seed: int = 0) -> SubclassCodebook:
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(c * k, c * k, generator=g)
    return SubclassCodebook(
        torch.randn(d, r, generator=g),
        torch.randn(d, generator=g),
        torch.randn(c * k, lda_dims, generator=g),
        scores / scores.sum(1, keepdim=True),
        c,
    )


def test_assignment_equals_masked_argmin_brute_force():
    module = _random_module(d=6, r=5, c=4, k=3, lda_dims=4)
    feats, labels = torch.randn(3, 6, 5, 2), torch.tensor([2, 0, 3])  # non-square grid
    got = module.assign(feats, labels)
    z = (feats.permute(0, 2, 3, 1).reshape(-1, 6) - module.lda_xbar) @ module.lda_scalings[:, :4]
    dist = torch.cdist(z.double(), module.centers.double()) ** 2
    y = labels.repeat_interleave(5 * 2)
    own = (torch.arange(12) // 3)[None, :] == y[:, None]
    expected = dist.masked_fill(~own, float("inf")).argmin(1)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(
        module.targets(feats, labels).permute(0, 2, 3, 1).reshape(-1, 12), module.score_matrix[expected]
    )


def test_one_subclass_per_class_returns_the_labels_own_centre():
    # K_inter = 1: the label's own centre is the farthest of all; the row-max trick would return index 0
    centers = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    module = SubclassCodebook(torch.eye(2), torch.zeros(2), centers, torch.eye(3), num_classes=3)
    feats = torch.zeros(2, 2, 1, 3)  # every location at the origin
    assert module.assign(feats, torch.tensor([2, 1])).tolist() == [2, 2, 2, 1, 1, 1]
    assert module.targets(feats, torch.tensor([2, 1]))[0, :, 0, 0].tolist() == [0.0, 0.0, 1.0]


def test_score_matrix_counts_and_empty_rows():
    subclass = np.array([0, 0, 0, 1, 1, 3, 3, 3, 3])  # sub-class 2 is empty
    nearest = np.array([0, 1, 1, 1, 1, 0, 3, 3, 2])
    scores = score_matrix_from_assignments(subclass, nearest, 4)
    expected = np.array([[1 / 3, 2 / 3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.25, 0, 0.25, 0.5]])
    np.testing.assert_allclose(scores, expected)
    np.testing.assert_allclose(scores.sum(1), 1.0)


def _brute_force_scores(z: np.ndarray, labels: np.ndarray, centers: np.ndarray, k: int) -> np.ndarray:
    """Steps 2-6 of SPEC §3.2 written out directly, given the K-means centres."""
    s = len(centers)
    dist = ((z[:, None] - centers[None]) ** 2).sum(-1)
    own = (np.arange(s) // k)[None, :] == labels[:, None]
    p = np.where(own, dist, np.inf).argmin(1)
    protos = np.stack([z[p == j].mean(0) if (p == j).any() else centers[j] for j in range(s)])
    nn_ = ((z[:, None] - protos[None]) ** 2).sum(-1).argmin(1)
    counts = np.zeros((s, s))
    for i, j in zip(p, nn_):
        counts[i, j] += 1
    for i in range(s):
        if counts[i].sum() == 0:
            counts[i, i] = 1
    return counts / counts.sum(1, keepdims=True)


def test_fit_subclasses_pipeline(recwarn):
    x, y = _labelled(1203, 10, 4, seed=5)
    y[y == 3] = 2
    y[:2] = 3  # class 3 has only 2 rows for k = 3 sub-classes
    x = x.astype(np.float32)
    module = fit_subclasses(
        x, y, num_classes=4, subclasses_per_class=3, lda_components=2, iters=10, seed=0, chunk_size=100
    )
    assert any("class 3 has 2 rows" in str(w.message) for w in recwarn.list)
    assert module.centers.shape == (12, 2) and module.score_matrix.shape == (12, 12)
    assert module.lda_scalings.shape == (10, 3)  # r = classes − 1; only the first 2 are used
    torch.testing.assert_close(module.score_matrix.sum(1), torch.ones(12))
    scalings, xbar = fit_lda(x, y, 4)
    z = lda_transform(x, scalings[:, :2], xbar)
    expected = _brute_force_scores(z, y, module.centers.numpy(), k=3)
    np.testing.assert_allclose(module.score_matrix.numpy(), expected, atol=1e-6)
    assert module.score_matrix[11, 11] == 1.0  # the surplus sub-class of class 3 is empty
    sizes = module.fit_info["cluster_sizes"]
    assert sizes["empty"] >= 1 and set(module.fit_info["seconds"]) == {
        "lda",
        "project",
        "kmeans",
        "prototypes",
        "scores",
    }
