"""K-means (faiss, exact L2) and chunked nearest-centre search (torch matmuls) over large row matrices."""

from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_CHUNK = 1 << 16


def train_kmeans(
    x: np.ndarray,
    k: int,
    iters: int = 20,
    seed: int = 0,
    max_points_per_centroid: int | None = 256,
    verbose: bool = False,
) -> np.ndarray:
    """Lloyd K-means with faiss on rows ``x`` (N, d); returns the centres (k, d) float32.

    ``max_points_per_centroid`` caps the training set at ``k·max_points_per_centroid`` rows sampled by
    faiss (its default, 256); ``None`` trains on all rows. Requires ``N >= k``.
    """
    import faiss

    n, d = x.shape
    if n < k:
        raise ValueError(f"K-means needs at least k={k} rows, got {n}")
    cap = max_points_per_centroid if max_points_per_centroid is not None else math.ceil(n / k) + 1
    km = faiss.Kmeans(
        d,
        k,
        niter=iters,
        seed=int(seed),
        max_points_per_centroid=int(cap),
        min_points_per_centroid=1,
        verbose=verbose,
    )
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, d)


def _as_tensor(chunk: np.ndarray, device: torch.device) -> torch.Tensor:
    # a copy: memmap chunks are read-only, which torch.from_numpy does not support
    return torch.from_numpy(np.array(chunk, dtype=np.float32)).to(device)


@torch.no_grad()
def nearest_center(
    x: np.ndarray,
    centers: np.ndarray | torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Index (N,) int64 and squared distance (N,) float32 of the nearest ``centers`` (K, d) to each row.

    Rows are processed in chunks of ``chunk_size`` (the last chunk holds the remainder) with
    ‖x‖² + ‖c‖² − 2·x·cᵀ in float32; ties go to the lowest index.
    """
    device = torch.device(device)
    c = torch.as_tensor(centers, dtype=torch.float32).to(device)
    c_sq = (c * c).sum(1)
    n = len(x)
    index = np.empty(n, dtype=np.int64)
    sq_dist = np.empty(n, dtype=np.float32)
    for lo in range(0, n, chunk_size):
        xb = _as_tensor(x[lo : lo + chunk_size], device)
        partial = torch.addmm(c_sq, xb, c.T, alpha=-2.0)  # ‖c‖² − 2 x·c; ‖x‖² does not change the argmin
        best, arg = partial.min(dim=1)
        hi = lo + len(xb)
        index[lo:hi] = arg.cpu().numpy()
        sq_dist[lo:hi] = (best + (xb * xb).sum(1)).clamp_min_(0).cpu().numpy()
    return index, sq_dist
