"""Codebook: K-means visual words of teacher features and their soft assignments (letKD-1, QuEST; SPEC §2)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from letkd.supervision.kmeans import DEFAULT_CHUNK, nearest_center, train_kmeans, train_kmeans_torch

# faiss's own default: K-means trains on a random subset of K·256 rows (see docs/supervision.md)
DEFAULT_MAX_POINTS_PER_CENTROID: int | None = 256


def as_buffer(value: torch.Tensor | np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A detached copy of an array or tensor with ``dtype``, ready to register as a buffer."""
    return (
        torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value).detach().to(dtype).clone()
    )


def check_workspace(
    out: torch.Tensor | None, shape: tuple[int, int], device: torch.device
) -> torch.Tensor | None:
    """``out`` if it is a contiguous float32 ``shape`` tensor on ``device`` (or ``None``); else ValueError."""
    if out is None:
        return None
    if (
        tuple(out.shape) != shape
        or out.dtype != torch.float32
        or out.device != device
        or not out.is_contiguous()
    ):
        raise ValueError(
            f"out must be a contiguous float32 tensor of shape {shape} on {device}, got "
            f"{out.dtype} {tuple(out.shape)} on {out.device}"
        )
    return out


def softmax_rows_(rows: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of contiguous float rows ``(N, K)``, written over ``rows``.

    Uses ATen's softmax kernel with its output aliased to its input (each row is reduced before it is
    written), which saves allocating a second map of the same size.
    """
    return torch.ops.aten._softmax.out(rows, -1, False, out=rows)


class Codebook(nn.Module):
    """Frozen K-means centres ρ (K, D) turning teacher features into per-location soft assignments.

    ``targets(f)`` for features ``f`` (B, D, H, W) returns (B, K, H, W) = softmax over K of
    −τ·‖f − ρ_k‖², computed in float32 under no-grad. τ is a run-time setting, not part of the fitted
    artefact: the method passes its layer's ``temperature`` (1 for letKD, 5 for QuEST) to each call;
    :attr:`temperature` is the value used when none is passed.
    """

    kind = "codebook"

    def __init__(
        self,
        centers: torch.Tensor | np.ndarray,
        temperature: float = 1.0,
        cluster_sizes: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        centers = as_buffer(centers, torch.float32)
        if centers.dim() != 2:
            raise ValueError(f"centers must be (K, D), got shape {tuple(centers.shape)}")
        self.register_buffer("centers", centers)
        sizes = torch.zeros(len(centers), dtype=torch.int64) if cluster_sizes is None else cluster_sizes
        self.register_buffer("cluster_sizes", as_buffer(sizes, torch.int64))
        self.temperature = float(temperature)
        self.fit_info: dict[str, Any] = {}

    @property
    def num_centers(self) -> int:
        """K, the number of centres (templates)."""
        return int(self.centers.shape[0])

    @property
    def dim(self) -> int:
        """D, the feature dimension."""
        return int(self.centers.shape[1])

    def _feature_rows(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W)`` features as float32 rows ``(B·H·W, D)`` on the centres' device, (b,h,w) order."""
        d = features.shape[1]
        if d != self.dim:
            raise ValueError(f"features have {d} channels, the codebook has dimension {self.dim}")
        return features.detach().to(self.centers.device, torch.float32).permute(0, 2, 3, 1).reshape(-1, d)

    @torch.no_grad()
    def sq_distances(self, features: torch.Tensor) -> torch.Tensor:
        """Squared distances (N, K) of the N = B·H·W locations of ``features`` (B, D, H, W), (b,h,w) order."""
        f = self._feature_rows(features)
        c = self.centers
        dist = torch.addmm((c * c).sum(1), f, c.T, alpha=-2.0).add_((f * f).sum(1, keepdim=True))
        return dist.clamp_min_(0)  # rounding can make ‖f‖² + ‖c‖² − 2f·c slightly negative

    @torch.no_grad()
    def targets(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        temperature: float | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Soft assignments (B, K, H, W), float32, summing to 1 over K at every location.

        ``labels`` are not used (the signature is the one every supervision module answers);
        ``temperature`` τ overrides :attr:`temperature` for this call (the method's layer setting).

        The result is a view of a ``(B·H·W, K)`` row matrix (channels-last strides). ``out``: an optional
        float32 ``(B·H·W, K)`` buffer on the centres' device to compute into (the methods reuse one across
        steps: a K = 4096 map is 67 MB at batch 64, and allocating it anew costs more than filling it).
        """
        b, _, h, w = features.shape
        tau = self.temperature if temperature is None else float(temperature)
        f = self._feature_rows(features)
        c = self.centers
        out = check_workspace(out, (f.shape[0], self.num_centers), c.device)
        # softmax(−τ‖f−c‖²) over the centres = softmax(τ(2f·c − ‖c‖²)): ‖f‖² is the same for every centre
        # of a row, so one matrix product and the softmax give the targets without the distances.
        with torch.autocast(c.device.type, enabled=False):  # float32 targets under AMP too
            logits = torch.addmm((c * c).sum(1), f, c.T, beta=-tau, alpha=2.0 * tau, out=out)
        softmax_rows_(logits)
        return logits.view(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`targets`."""
        return self.targets(features)

    def extra_repr(self) -> str:
        return f"num_centers={self.num_centers}, dim={self.dim}, temperature={self.temperature}"


def kmeans_points_per_centroid(max_rows: int | None, num_centers: int) -> int | None:
    """faiss ``max_points_per_centroid`` for a K-means training-set cap of ``max_rows`` rows.

    None (no cap given) → the project default (see docs/supervision.md); a cap ≥ N trains on all rows.
    """
    if max_rows is None:
        return DEFAULT_MAX_POINTS_PER_CENTROID
    return max(1, math.ceil(max_rows / num_centers))


def kmeans_backend(device: str | torch.device, kmeans: str = "auto") -> str:
    """``faiss`` or ``torch``: ``auto`` = torch on a CUDA device, faiss (CPU) otherwise."""
    if kmeans not in ("auto", "faiss", "torch"):
        raise ValueError(f"kmeans must be auto, faiss or torch, got {kmeans!r}")
    if kmeans != "auto":
        return kmeans
    return "torch" if torch.device(device).type == "cuda" else "faiss"


def fit_codebook(
    rows: np.ndarray,
    num_centers: int = 4096,
    iters: int = 20,
    seed: int = 0,
    max_points_per_centroid: int | None = DEFAULT_MAX_POINTS_PER_CENTROID,
    progress: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
    device: str | torch.device = "cpu",
    kmeans: str = "auto",
) -> Codebook:
    """K-means codebook of ``rows`` (N, D) (exact L2), then cluster sizes over *all* rows.

    K-means runs with faiss on the CPU, or with :func:`~letkd.supervision.kmeans.train_kmeans_torch` on
    ``device`` when it is a GPU (``kmeans``: ``auto``, ``faiss`` or ``torch``).
    ``max_points_per_centroid``: K-means trains on a seeded subset of ``K·max_points_per_centroid`` rows
    (faiss's default 256); ``None`` trains on all rows as in the paper. After training every row is
    assigned to its nearest centre (chunked, remainder included) to count cluster sizes.
    ``fit_info`` records the mean squared distance of all rows to their centre (the K-means objective)
    and the seconds spent.
    """
    t0 = time.perf_counter()
    backend = kmeans_backend(device, kmeans)
    extra: dict[str, Any] = {}
    if backend == "torch":
        centers, extra = train_kmeans_torch(
            rows,
            num_centers,
            iters=iters,
            seed=seed,
            max_points_per_centroid=max_points_per_centroid,
            device=device,
            progress=progress,
        )
        extra = {"kmeans_train_rows": extra["train_rows"], "kmeans_empty_splits": extra["empty_splits"]}
    else:
        centers = train_kmeans(
            rows,
            num_centers,
            iters=iters,
            seed=seed,
            max_points_per_centroid=max_points_per_centroid,
            verbose=progress,
        )
    t1 = time.perf_counter()
    assignment, sq_dist = nearest_center(rows, centers, chunk_size=chunk_size, device=device)
    sizes = np.bincount(assignment, minlength=num_centers)
    codebook = Codebook(centers, cluster_sizes=sizes)
    codebook.fit_info = {
        "kmeans_objective": float(sq_dist.astype(np.float64).mean()),
        "kmeans_backend": "faiss-cpu" if backend == "faiss" else f"torch-{torch.device(device).type}",
        **extra,
        "seconds_kmeans": t1 - t0,
        "seconds_assign": time.perf_counter() - t1,
        "cluster_sizes": size_stats(sizes),
    }
    return codebook


def size_stats(sizes: np.ndarray) -> dict[str, float]:
    """min / median / max / number of empty clusters of a cluster-size vector."""
    sizes = np.asarray(sizes)
    return {
        "min": int(sizes.min()),
        "median": float(np.median(sizes)),
        "max": int(sizes.max()),
        "empty": int((sizes == 0).sum()),
    }
