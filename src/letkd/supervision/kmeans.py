"""K-means over large row matrices: faiss on the CPU, a torch implementation of the same algorithm on a
device (GPU), and chunked nearest-centre search (torch matmuls)."""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator

import numpy as np
import torch

from letkd.supervision.errors import NotEnoughRowsError

DEFAULT_CHUNK = 1 << 16
MAX_BUFFER = 1 << 25  # distance entries per chunk (128 MB of float32)


def release_mapped_pages(x: np.ndarray) -> None:
    """Drop the pages of a read-only memory-mapped array from this process's resident set.

    The data stays in the OS page cache (a later access just maps it again), so streaming over a row
    file keeps the process's memory at about one chunk instead of growing to the file's size.
    """
    mapping = getattr(x, "_mmap", None)
    if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED") and mapping.closed is False:
        mapping.madvise(mmap.MADV_DONTNEED)


def row_chunks(x: np.ndarray, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, x[start : start + chunk_size])`` over all rows, remainder included; memmap pages are
    released after each chunk (see :func:`release_mapped_pages`)."""
    for lo in range(0, len(x), chunk_size):
        yield lo, x[lo : lo + chunk_size]
        release_mapped_pages(x)


def train_kmeans(
    x: np.ndarray,
    k: int,
    iters: int = 20,
    seed: int = 0,
    max_points_per_centroid: int | None = 256,
    verbose: bool = False,
    threads: int | None = None,
) -> np.ndarray:
    """Lloyd K-means with faiss on rows ``x`` (N, d); returns the centres (k, d) float32.

    ``max_points_per_centroid`` caps the training set at ``k·max_points_per_centroid`` rows sampled by
    faiss (its default, 256); ``None`` trains on all rows. Requires ``N >= k``. ``threads`` sets faiss's
    OpenMP threads for this call (None = faiss's default, all cores). ``verbose`` prints faiss's per-iteration
    line, which redraws itself with carriage returns: it is shown only when stdout is a terminal.
    """
    import sys

    import faiss

    n, d = x.shape
    if n < k:
        raise NotEnoughRowsError(f"K-means needs at least K={k} rows, got {n}: lower K or use more rows")
    cap = max_points_per_centroid if max_points_per_centroid is not None else math.ceil(n / k) + 1
    km = faiss.Kmeans(
        d,
        k,
        niter=iters,
        seed=int(seed),
        max_points_per_centroid=int(cap),
        min_points_per_centroid=1,
        verbose=verbose and sys.stdout.isatty(),
    )
    previous = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        km.train(np.ascontiguousarray(x, dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(previous)
        release_mapped_pages(x)
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
    max_buffer: int = MAX_BUFFER,
) -> tuple[np.ndarray, np.ndarray]:
    """Index (N,) int64 and squared distance (N,) float32 of the nearest ``centers`` (K, d) to each row.

    Rows are processed in chunks (the last chunk holds the remainder) of at most ``chunk_size`` rows and
    ``max_buffer`` distance entries, with ‖x‖² + ‖c‖² − 2·x·cᵀ in float32; ties go to the lowest index.
    """
    device = torch.device(device)
    c = torch.as_tensor(centers, dtype=torch.float32).to(device)
    c_sq, c_t = (c * c).sum(1), c.T.contiguous()
    n = len(x)
    step = max(1, min(chunk_size, max_buffer // max(1, len(c))))
    partial = torch.empty(min(step, n), len(c), device=device)  # reused: no page faults per chunk
    best = torch.empty(min(step, n), device=device)
    arg = torch.empty(min(step, n), dtype=torch.int64, device=device)
    index = np.empty(n, dtype=np.int64)
    sq_dist = np.empty(n, dtype=np.float32)
    for lo, chunk in row_chunks(x, step):
        xb = _as_tensor(chunk, device)
        m = len(xb)
        # ‖c‖² − 2 x·c: ‖x‖² does not change the argmin and is added afterwards
        torch.addmm(c_sq, xb, c_t, alpha=-2.0, out=partial[:m])
        torch.min(partial[:m], dim=1, out=(best[:m], arg[:m]))
        index[lo : lo + m] = arg[:m].cpu().numpy()
        sq_dist[lo : lo + m] = (best[:m] + (xb * xb).sum(1)).clamp_min_(0).cpu().numpy()
    return index, sq_dist


def _split_empty(centers: torch.Tensor, sizes: torch.Tensor, gen: torch.Generator) -> int:
    """Give every empty cluster half of a populated one, as faiss does; returns how many were empty.

    The donor is drawn with probability ∝ its size − 1; both centres move apart by a relative 1/1024
    on alternate coordinates.
    """
    empty = torch.nonzero(sizes == 0).flatten().tolist()
    for ci in empty:
        weights = (sizes - 1).clamp_min(0).to(torch.float64)
        if float(weights.sum()) <= 0:
            break
        cj = int(torch.multinomial(weights.cpu(), 1, generator=gen))
        eps = torch.full((centers.shape[1],), 1.0 / 1024, device=centers.device)
        eps[1::2] *= -1
        centers[ci] = centers[cj] * (1 + eps)
        centers[cj] = centers[cj] * (1 - eps)
        sizes[ci] = sizes[cj] // 2
        sizes[cj] -= sizes[ci]
    return len(empty)


@torch.no_grad()
def train_kmeans_torch(
    x: np.ndarray,
    k: int,
    iters: int = 20,
    seed: int = 0,
    max_points_per_centroid: int | None = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    max_buffer: int = MAX_BUFFER,
) -> tuple[np.ndarray, dict]:
    """Lloyd K-means in torch on ``device`` (a GPU when there is one): centres (k, d) float32 and info.

    The same algorithm as faiss's: a seeded training subset of ``k·max_points_per_centroid`` rows
    (``None`` = all rows), ``k`` distinct random rows as initial centres, ``iters`` rounds of exact L2
    assignment + mean update, empty clusters split off populated ones. Rows move to the device once, in
    their storage type (float16 samples stay float16 there); distances are computed in float32 chunks
    and centre sums accumulated in float64. ``info`` holds the mean squared distance per iteration and
    the number of empty-cluster splits.
    """
    from tqdm.auto import tqdm

    from letkd.utils import tqdm_disable

    n, d = x.shape
    if n < k:
        raise NotEnoughRowsError(f"K-means needs at least K={k} rows, got {n}: lower K or use more rows")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(int(seed))
    cap = n if max_points_per_centroid is None else min(n, k * max_points_per_centroid)
    chosen = torch.randperm(n, generator=gen)[:cap].sort().values.numpy() if cap < n else None
    store = torch.float16 if x.dtype == np.float16 else torch.float32
    data = torch.empty(cap, d, dtype=store, device=device)
    for lo in range(0, cap, chunk_size):
        part = x[chosen[lo : lo + chunk_size]] if chosen is not None else x[lo : lo + chunk_size]
        data[lo : lo + len(part)] = torch.from_numpy(np.array(part, dtype=store_np(store))).to(device)
    release_mapped_pages(x)
    centers = data[torch.randperm(cap, generator=gen)[:k].to(device)].float()
    step = max(1, min(chunk_size, max_buffer // max(1, k)))
    objective: list[float] = []
    splits = 0
    for _ in tqdm(range(iters), desc=f"K-means K={k}", unit="iter", disable=tqdm_disable(progress)):
        sums = torch.zeros(k, d, dtype=torch.float64, device=device)
        sizes = torch.zeros(k, dtype=torch.int64, device=device)
        total = 0.0
        c_sq, c_t = (centers * centers).sum(1), centers.T.contiguous()
        for lo in range(0, cap, step):
            xb = data[lo : lo + step].float()
            best, arg = torch.addmm(c_sq, xb, c_t, alpha=-2.0).min(dim=1)
            total += float((best + (xb * xb).sum(1)).clamp_min_(0).sum(dtype=torch.float64))
            sums.index_add_(0, arg, xb.to(torch.float64))
            sizes += torch.bincount(arg, minlength=k)
        objective.append(total / cap)
        centers = (sums / sizes.clamp_min(1)[:, None]).float()
        splits += _split_empty(centers, sizes, gen)
    return centers.cpu().numpy(), {"objective_per_iter": objective, "empty_splits": splits, "train_rows": cap}


def store_np(dtype: torch.dtype) -> type:
    """The numpy type of a torch storage type used here (float16 or float32)."""
    return np.float16 if dtype == torch.float16 else np.float32
