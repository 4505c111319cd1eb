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

from letkd.supervision.kmeans import DEFAULT_CHUNK, row_chunks


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

    One pass: Σ (x − s)(x − s)ᵀ and per-class sums of x − s are accumulated chunk by chunk, with s the
    mean of the first chunk (so that subtracting the class-mean term at the end cancels few digits);
    the within-class scatter is Σ (x − s)(x − s)ᵀ − Σ_c n_c (μ_c − s)(μ_c − s)ᵀ.
    """
    n, d = rows.shape
    counts = torch.zeros(num_classes, dtype=torch.float64)
    sums = torch.zeros(num_classes, d, dtype=torch.float64)
    gram = torch.zeros(d, d, dtype=torch.float64)
    shift = torch.zeros(d, dtype=torch.float64)
    for lo, chunk in row_chunks(rows, chunk_size):
        x = torch.from_numpy(np.array(chunk, dtype=np.float64))
        y = torch.from_numpy(np.array(labels[lo : lo + chunk_size], dtype=np.int64))
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
        if lo == 0:
            shift = x.mean(0)
        x -= shift
        gram += x.T @ x
        sums.index_add_(0, y, x)
        counts += torch.bincount(y, minlength=num_classes).to(torch.float64)
    centred_means = sums / counts.clamp_min(1)[:, None]
    within = gram - (centred_means * counts[:, None]).T @ centred_means
    return ClassScatter(
        counts=counts.to(torch.int64).numpy(),
        means=(centred_means + shift).numpy(),
        within=within.numpy(),
    )


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
    for lo, chunk in row_chunks(rows, chunk_size):
        x = torch.from_numpy(np.array(chunk, dtype=np.float32))
        out[lo : lo + len(x)] = ((x - shift) @ w).numpy()
    return out
