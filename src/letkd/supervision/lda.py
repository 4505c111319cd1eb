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


class ScatterAccumulator:
    """Class counts, sums and scatter of labelled rows added chunk by chunk, in float64.

    Σ (x − s)(x − s)ᵀ and per-class sums of x − s are accumulated, with ``s`` (:attr:`shift`) the mean
    of the first chunk (so that subtracting the class-mean term at the end cancels few digits). The
    tensors live on ``device`` (the CPU for MPS, which has no float64).
    """

    def __init__(self, num_classes: int, dim: int, device: str | torch.device = "cpu") -> None:
        device = torch.device(device)
        self.device = torch.device("cpu") if device.type == "mps" else device
        self.num_classes = int(num_classes)
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=self.device)
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=self.device)
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)
        self.shift = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.started = False

    def add(self, x: torch.Tensor, y: torch.Tensor, group: int = 1) -> None:
        """Add rows ``x`` (n, D) with labels ``y`` (n,) in [0, num_classes); ``x`` may be modified.

        ``group``: the rows come in runs of ``group`` consecutive rows with one label (the locations of
        one image), so class sums add one sum per run (the same statistics, less work).
        """
        if len(y) == 0:
            return
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got [{int(y.min())}, {int(y.max())}]"
            )
        x = x.to(self.device, torch.float64)
        y = y.to(self.device, torch.int64)
        if not self.started:
            self.shift = x.mean(0)
            self.started = True
        x -= self.shift
        self.gram += x.T @ x
        if group > 1:
            self.sums.index_add_(0, y[::group], x.view(-1, group, x.shape[1]).sum(1))
        else:
            self.sums.index_add_(0, y, x)
        self.counts += torch.bincount(y, minlength=self.num_classes).to(torch.float64)

    def recentre(self, shift: torch.Tensor) -> None:
        """Express the statistics relative to ``shift`` instead of :attr:`shift` (exact algebra)."""
        delta = self.shift - shift.to(self.device, torch.float64)
        total = self.sums.sum(0)
        self.gram += (
            torch.outer(total, delta)
            + torch.outer(delta, total)
            + self.counts.sum() * torch.outer(delta, delta)
        )
        self.sums += self.counts[:, None] * delta
        self.shift = shift.to(self.device, torch.float64).clone()

    def result(self) -> ClassScatter:
        """The :class:`ClassScatter` of every row added so far."""
        counts, sums, gram = (t.cpu() for t in (self.counts, self.sums, self.gram))
        centred_means = sums / counts.clamp_min(1)[:, None]
        within = gram - (centred_means * counts[:, None]).T @ centred_means
        return ClassScatter(
            counts=counts.to(torch.int64).numpy(),
            means=(centred_means + self.shift.cpu()).numpy(),
            within=within.numpy(),
        )


def class_scatter(
    rows: np.ndarray, labels: np.ndarray, num_classes: int, chunk_size: int = DEFAULT_CHUNK
) -> ClassScatter:
    """Class counts, means and within-class scatter Σ (x − μ_y)(x − μ_y)ᵀ of ``rows`` (N, D), in float64.

    One pass over ``rows`` chunk by chunk (:class:`ScatterAccumulator`); the within-class scatter is
    Σ (x − s)(x − s)ᵀ − Σ_c n_c (μ_c − s)(μ_c − s)ᵀ.
    """
    acc = ScatterAccumulator(num_classes, rows.shape[1])
    for lo, chunk in row_chunks(rows, chunk_size):
        x = torch.from_numpy(np.array(chunk, dtype=np.float64))
        acc.add(x, torch.from_numpy(np.array(labels[lo : lo + chunk_size], dtype=np.int64)))
    return acc.result()


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
