"""Linear discriminant analysis from streamed per-class statistics (equal to scikit-learn's "svd" solver).

scikit-learn's ``LinearDiscriminantAnalysis(solver="svd")`` needs the whole row matrix in memory. Its
within-class step only uses the class-centred data X_c through its SVD, and X_cᵀX_c is the within-class
scatter: the same right singular vectors and squared singular values come from an eigendecomposition of
the scatter, which we accumulate chunk by chunk in float64. The between-class step only needs the class
counts and means. Memory is O(D² + C·D) whatever the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from letkd.supervision.kmeans import DEFAULT_CHUNK


@dataclass
class ClassScatter:
    """Per-class statistics of labelled rows: ``counts`` (C,), ``means`` (C, D), ``within`` scatter (D, D)."""

    counts: np.ndarray
    means: np.ndarray
    within: np.ndarray


def class_scatter(
    rows: np.ndarray, labels: np.ndarray, num_classes: int, chunk_size: int = DEFAULT_CHUNK
) -> ClassScatter:
    """Class counts, means and within-class scatter Σ (x − μ_y)(x − μ_y)ᵀ of ``rows`` (N, D), in float64.

    Each chunk is centred on its own class means, and chunks are merged with the pairwise update of
    Chan et al. (exact, no cancellation from a raw Σ x xᵀ).
    """
    n, d = rows.shape
    counts = np.zeros(num_classes, dtype=np.int64)
    means = torch.zeros(num_classes, d, dtype=torch.float64)
    within = torch.zeros(d, d, dtype=torch.float64)
    for lo in range(0, n, chunk_size):
        x = torch.from_numpy(np.array(rows[lo : lo + chunk_size], dtype=np.float64))
        y = torch.from_numpy(np.array(labels[lo : lo + chunk_size], dtype=np.int64))
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
        m = torch.bincount(y, minlength=num_classes).to(torch.float64)
        sums = torch.zeros(num_classes, d, dtype=torch.float64).index_add_(0, y, x)
        chunk_means = sums / m.clamp_min(1)[:, None]
        centred = x - chunk_means[y]
        delta = chunk_means - means
        before = torch.from_numpy(counts).to(torch.float64)
        after = before + m
        weight = torch.where(after > 0, before * m / after.clamp_min(1), torch.zeros_like(after))
        within += centred.T @ centred + (delta * weight[:, None]).T @ delta
        means += delta * torch.where(after > 0, m / after.clamp_min(1), torch.zeros_like(after))[:, None]
        counts += m.to(torch.int64).numpy()
    return ClassScatter(counts=counts, means=means.numpy(), within=within.numpy())


def lda_from_scatter(stats: ClassScatter, tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """``scalings`` (D, r) and ``xbar`` (D,) of scikit-learn's svd-solver LDA, from class statistics.

    Classes without rows are left out (as scikit-learn only sees the classes present). Priors are the
    class frequencies. Components match scikit-learn's ``scalings_`` up to the sign of each column.
    """
    present = stats.counts > 0
    counts = stats.counts[present].astype(np.float64)
    means = stats.means[present]
    n = counts.sum()
    num_classes = len(counts)
    # 1) within-class scaling: columns of X_c divided by their standard deviation
    std = np.sqrt(np.clip(np.diag(stats.within), 0, None) / n)
    std[std == 0] = 1.0
    scaled = stats.within / n / np.outer(std, std)
    eigval, eigvec = np.linalg.eigh(scaled)
    order = np.argsort(eigval)[::-1]
    sing = np.sqrt(np.clip(eigval[order], 0, None))  # singular values of sqrt(1/n)·X_c/std
    rank = int((sing > tol).sum())
    scalings = (eigvec[:, order[:rank]] / std[:, None]) / sing[:rank]
    # 2) between-class step on the prior-weighted class means
    priors = counts / n
    xbar = priors @ means
    fac = 1.0 if num_classes == 1 else 1.0 / (num_classes - 1)
    between = (np.sqrt(n * priors * fac)[:, None] * (means - xbar)) @ scalings
    _, sing_b, vt = np.linalg.svd(between, full_matrices=False)
    rank_b = int((sing_b > tol * sing_b[0]).sum()) if len(sing_b) else 0
    return scalings @ vt.T[:, :rank_b], xbar


def fit_lda(
    rows: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    tol: float = 1e-4,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """LDA of ``rows`` (N, D) with ``labels`` (N,) in [0, num_classes): ``scalings`` (D, r), ``xbar`` (D,).

    Equals ``sklearn.discriminant_analysis.LinearDiscriminantAnalysis(solver="svd", tol=tol)`` (its
    ``scalings_`` and ``xbar_``; ``transform(x) = (x − xbar) @ scalings`` up to the sign of each component),
    computed in one streamed pass so ``rows`` may be a memmap larger than memory.
    """
    return lda_from_scatter(class_scatter(rows, labels, num_classes, chunk_size), tol=tol)


@torch.no_grad()
def lda_transform(
    rows: np.ndarray,
    scalings: np.ndarray,
    xbar: np.ndarray,
    chunk_size: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Project ``rows`` (N, D) to ``(rows − xbar) @ scalings`` (N, r) float32, chunk by chunk."""
    w = torch.as_tensor(np.asarray(scalings), dtype=torch.float32)
    shift = torch.as_tensor(np.asarray(xbar), dtype=torch.float32)
    out = np.empty((len(rows), w.shape[1]), dtype=np.float32)
    for lo in range(0, len(rows), chunk_size):
        x = torch.from_numpy(np.array(rows[lo : lo + chunk_size], dtype=np.float32))
        out[lo : lo + len(x)] = ((x - shift) @ w).numpy()
    return out
