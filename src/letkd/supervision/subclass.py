"""Sub-class codebook: LDA → per-class K-means → score matrix s_T, and its online targets (letKD-2)."""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn

from letkd.supervision.codebook import as_buffer, check_workspace, size_stats
from letkd.supervision.kmeans import DEFAULT_CHUNK, nearest_center, train_kmeans
from letkd.supervision.lda import ClassScatter, fit_lda, lda_from_scatter, lda_transform


class SubclassCodebook(nn.Module):
    """Frozen LDA projection, per-class sub-class centres and score matrix turning features into targets.

    Buffers: ``lda_scalings`` (D, r), ``lda_xbar`` (D,), ``centers`` (S, d) with S = num_classes·k in
    class-major order (class c owns rows c·k … c·k+k−1) and d ≤ r the number of LDA components used,
    ``score_matrix`` (S, S) whose row s is the teacher's distribution for sub-class s.
    ``targets(f, y)`` for features (B, D, H, W) and labels (B,) returns (B, S, H, W): at each location,
    the score-matrix row of the nearest centre among the label's own k sub-classes.
    """

    kind = "subclass"

    def __init__(
        self,
        lda_scalings: torch.Tensor | np.ndarray,
        lda_xbar: torch.Tensor | np.ndarray,
        centers: torch.Tensor | np.ndarray,
        score_matrix: torch.Tensor | np.ndarray,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.register_buffer("lda_scalings", as_buffer(lda_scalings, torch.float32))
        self.register_buffer("lda_xbar", as_buffer(lda_xbar, torch.float32))
        self.register_buffer("centers", as_buffer(centers, torch.float32))
        self.register_buffer("score_matrix", as_buffer(score_matrix, torch.float32))
        s, d = self.centers.shape
        if s % num_classes:
            raise ValueError(f"{s} sub-class centres do not split evenly into {num_classes} classes")
        if d > self.lda_scalings.shape[1] or self.lda_scalings.shape[0] != self.lda_xbar.shape[0]:
            raise ValueError(
                f"LDA scalings {tuple(self.lda_scalings.shape)} / xbar "
                f"{tuple(self.lda_xbar.shape)} do not fit centres of dimension {d}"
            )
        if tuple(self.score_matrix.shape) != (s, s):
            raise ValueError(f"score matrix must be ({s}, {s}), got {tuple(self.score_matrix.shape)}")
        self.num_classes = int(num_classes)
        self.fit_info: dict[str, Any] = {}

    @property
    def num_subclasses(self) -> int:
        """S = num_classes · subclasses_per_class (the number of templates this supervises)."""
        return int(self.centers.shape[0])

    @property
    def subclasses_per_class(self) -> int:
        """k, the sub-classes of each class."""
        return self.num_subclasses // self.num_classes

    @property
    def dim(self) -> int:
        """D, the teacher feature dimension the LDA projects from."""
        return int(self.lda_xbar.shape[0])

    @torch.no_grad()
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """LDA coordinates (N, d) of the N = B·H·W locations of ``features`` (B, D, H, W), (b, h, w) order."""
        b, d, h, w = features.shape
        if d != self.dim:
            raise ValueError(f"features have {d} channels, the LDA expects {self.dim}")
        f = features.detach().to(self.lda_xbar.device, torch.float32).permute(0, 2, 3, 1).reshape(-1, d)
        return (f - self.lda_xbar) @ self.lda_scalings[:, : self.centers.shape[1]]

    @torch.no_grad()
    def assign(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sub-class index (N,) per location: the nearest centre among the label's own sub-classes.

        Equivalent to setting the distances to other classes' centres to +∞ and taking the argmin
        (ties go to the lowest index); labels are expanded to (B, H, W) and flattened like the features.
        """
        b, _, h, w = features.shape
        k = self.subclasses_per_class
        z = self.project(features)
        y = labels.to(z.device, torch.int64).view(b, 1, 1).expand(b, h, w).reshape(-1)
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        own = self.centers.view(self.num_classes, k, -1)[y]  # (N, k, d): the label's centres
        dist = ((z.unsqueeze(1) - own) ** 2).sum(-1)
        return y * k + dist.argmin(dim=1)

    @torch.no_grad()
    def targets(
        self, features: torch.Tensor, labels: torch.Tensor | None = None, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Target distributions (B, S, H, W) for ``features`` (B, D, H, W) and image ``labels`` (B,).

        ``labels`` are required (a location's candidates are its label's sub-classes).

        A view of a ``(B·H·W, S)`` row matrix; ``out`` is an optional float32 buffer of that shape to write
        into (see :meth:`letkd.supervision.codebook.Codebook.targets`).
        """
        if labels is None:
            raise ValueError("sub-class targets need the images' labels")
        b, _, h, w = features.shape
        with torch.autocast(features.device.type, enabled=False):  # float32 distances under AMP too
            index = self.assign(features, labels)
        out = check_workspace(out, (index.shape[0], self.num_subclasses), self.score_matrix.device)
        rows = (
            torch.index_select(self.score_matrix, 0, index, out=out)
            if out is not None
            else self.score_matrix[index]
        )
        return rows.view(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`targets`."""
        return self.targets(features, labels)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, subclasses_per_class={self.subclasses_per_class}, "
            f"dim={self.dim}, lda_components={int(self.centers.shape[1])}"
        )


def score_matrix_from_assignments(
    subclass: np.ndarray, nearest: np.ndarray, num_subclasses: int
) -> np.ndarray:
    """s_T (S, S): row i = distribution of the nearest prototype j over the rows of sub-class i.

    Counted with one ``bincount(S·i + j)``; a sub-class without rows gets a one-hot row on the diagonal.
    """
    s = num_subclasses
    counts = np.bincount(subclass.astype(np.int64) * s + nearest, minlength=s * s).reshape(s, s)
    scores = counts.astype(np.float64)
    del counts  # S² entries (64 M for ImageNet's 8000 sub-classes): one temporary at a time
    totals = scores.sum(1)
    empty = totals == 0
    scores[empty, np.flatnonzero(empty)] = 1.0
    totals[empty] = 1.0
    scores /= totals[:, None]
    assert np.allclose(scores.sum(1), 1.0), "score-matrix rows must sum to 1"
    return scores


def _class_centers(
    z: np.ndarray, k: int, iters: int, seed: int, max_points_per_centroid: int | None
) -> np.ndarray:
    """k centres (k, d) for one class's LDA rows; with fewer than k rows, the rows themselves repeated."""
    n, d = z.shape
    if n >= k:
        # one OpenMP thread per class (classes run in parallel): on these small problems faiss's
        # own threading costs more than it gains (measured 30× slower with 2 threads than with 1)
        return train_kmeans(
            z, k, iters=iters, seed=seed, max_points_per_centroid=max_points_per_centroid, threads=1
        )
    if n == 0:
        return np.zeros((k, d), dtype=np.float32)  # the LDA origin = the overall mean
    return z[np.arange(k) % n].astype(np.float32)  # duplicates tie and lose to the first copy


def fit_subclasses(
    rows: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    subclasses_per_class: int = 8,
    lda_components: int = 60,
    iters: int = 20,
    seed: int = 0,
    max_points_per_centroid: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    device: str | torch.device = "cpu",
    scatter: ClassScatter | None = None,
) -> SubclassCodebook:
    """Fit the letKD-2 sub-class supervision on ``rows`` (N, D) with image ``labels`` (N,) (SPEC §3.2).

    1. LDA (scikit-learn svd solver, streamed); keep the first ``min(lda_components, r)`` components.
       ``scatter``: class statistics of a larger set of rows of which ``rows`` is a per-class sample
       (LDA from them; steps 2-4 on the sample); None = LDA from ``rows``.
    2. Per class, faiss K-means with k = ``subclasses_per_class`` on its LDA rows (seed ``seed + class``;
       ``max_points_per_centroid`` None = all rows); sub-class label P(n) = k·y + nearest own centre.
    3. Prototypes = mean LDA row per sub-class (an empty sub-class falls back to its centre).
    4. NN(n) = nearest prototype among all S = C·k; s_T[i, j] = #{P = i, NN = j} / #{P = i}.
    ``fit_info`` holds the seconds of each step and sub-class size statistics.
    """
    k = subclasses_per_class
    s = num_classes * k
    labels = np.asarray(labels, dtype=np.int64)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if scatter is None:
        scalings, xbar = fit_lda(rows, labels, num_classes, chunk_size=chunk_size)
    else:
        scalings, xbar = lda_from_scatter(scatter)
    d = min(lda_components, scalings.shape[1])
    seconds["lda"] = time.perf_counter() - t

    t = time.perf_counter()
    z = lda_transform(rows, scalings[:, :d], xbar, chunk_size=chunk_size)
    seconds["project"] = time.perf_counter() - t

    t = time.perf_counter()
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for c in np.flatnonzero(counts < k):
        warnings.warn(
            f"class {c} has {counts[c]} rows for {k} sub-classes; its surplus sub-classes stay empty",
            stacklevel=2,
        )

    def class_centers(c: int) -> np.ndarray:
        zc = z[order[bounds[c] : bounds[c + 1]]]
        return _class_centers(zc, k, iters, seed + c, max_points_per_centroid)

    centers = np.empty((s, d), dtype=np.float32)
    with ThreadPoolExecutor(max_workers=max(1, min(num_classes, torch.get_num_threads()))) as pool:
        for c, class_centers_c in enumerate(pool.map(class_centers, range(num_classes))):
            centers[c * k : (c + 1) * k] = class_centers_c
    subclass = np.empty(len(z), dtype=np.int64)
    for c in np.flatnonzero(counts):
        idx = order[bounds[c] : bounds[c + 1]]
        subclass[idx] = c * k + nearest_center(z[idx], centers[c * k : (c + 1) * k], chunk_size, device)[0]
    seconds["kmeans"] = time.perf_counter() - t

    t = time.perf_counter()
    sizes = np.bincount(subclass, minlength=s)
    sums = torch.zeros(s, d, dtype=torch.float64)
    for lo in range(0, len(z), chunk_size):
        sums.index_add_(
            0,
            torch.from_numpy(subclass[lo : lo + chunk_size]),
            torch.from_numpy(z[lo : lo + chunk_size]).to(torch.float64),
        )
    prototypes = (sums / torch.from_numpy(np.maximum(sizes, 1))[:, None]).to(torch.float32).numpy()
    prototypes[sizes == 0] = centers[sizes == 0]
    seconds["prototypes"] = time.perf_counter() - t

    t = time.perf_counter()
    nearest, _ = nearest_center(z, prototypes, chunk_size, device)
    scores = score_matrix_from_assignments(subclass, nearest, s)
    seconds["scores"] = time.perf_counter() - t

    module = SubclassCodebook(scalings, xbar, centers, scores, num_classes)
    module.fit_info = {
        "seconds": seconds,
        "lda_rank": int(scalings.shape[1]),
        "lda_components": d,
        "cluster_sizes": size_stats(sizes),
    }
    return module
