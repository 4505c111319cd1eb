"""Seeded row samples that do not depend on batch order, worker count or sharding.

Every row (one location of one image) gets a 64-bit priority, a hash of ``(seed, image index, location)``
(:func:`row_priorities`). A sample of ``k`` rows of a group (all rows, or the rows of one class) is the
``k`` rows of the group with the smallest priorities, ties broken by the row index (:func:`bottom_k`):
a property of the rows alone, so any order, batching or split of the rows into shards gives the same
sample, and the sample of a union of shards is the sample of the union of the shards' samples.

:class:`SamplePool` keeps such a sample of a stream in a preallocated buffer: rows whose priority is
above the current threshold of their group are dropped on arrival, and when the buffer fills up it is
compacted in place to the ``k`` best of each group (so memory stays at about ``(1 + slack)·k`` rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_PRIORITY = np.uint64(np.iinfo(np.uint64).max)
FLOAT16_MAX = float(np.finfo(np.float16).max)
_COMPACT_CHUNK = 1 << 14


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic): a bijective 64-bit mix."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_priorities(seed: int, images: np.ndarray, num_locations: int) -> np.ndarray:
    """Priorities (n·L,) uint64 of the rows of ``images`` (n,) (image indices), ``num_locations`` L each.

    Row ``i·L + l`` of the result belongs to image ``images[i]``, location ``l``; its priority is a hash
    of ``(seed, image, location)`` only.
    """
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    per_image = _splitmix64(base ^ np.asarray(images, dtype=np.uint64))
    locations = np.arange(num_locations, dtype=np.uint64)
    return _splitmix64(per_image[:, None] ^ locations[None, :]).reshape(-1)


def bottom_k(priority: np.ndarray, index: np.ndarray, group: np.ndarray, k: int) -> np.ndarray:
    """Positions (ascending) of the ``k`` entries of smallest ``(priority, index)`` in each ``group``."""
    if len(priority) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((index, priority, group))  # by group, then priority, then index
    sorted_groups = group[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_groups, sorted_groups, side="left")
    return np.sort(order[rank < k])


def inclusion_threshold(k: int, total_rows: int) -> np.uint64:
    """A priority threshold that about ``k + 6·√k`` of ``total_rows`` uniform priorities fall under.

    Dropping rows above it cannot change the ``k`` smallest unless fewer than ``k`` rows pass, which
    happens with probability below 1e-9; then the sample holds every row that passed (still a property of
    the rows alone).
    """
    want = k + 6.0 * math.sqrt(k) + 16.0
    if want >= total_rows:
        return MAX_PRIORITY
    return np.uint64(min(int(want / total_rows * 2.0**64), int(MAX_PRIORITY)))


def to_storage(rows: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """``rows`` as ``dtype``; raise ValueError when float16 cannot hold them (|x| > 65504)."""
    if dtype == np.float16 and len(rows):
        peak = float(np.abs(rows).max())
        if peak > FLOAT16_MAX:
            raise ValueError(
                f"{what} reach |x| = {peak:.4g}, beyond float16's range (65504): "
                "set supervision.sample_dtype=float32"
            )
    return rows.astype(dtype, copy=False)


@dataclass
class Sample:
    """A finished sample, sorted by row index: ``rows`` (n, D), ``index``, ``label``, ``priority`` (n,)."""

    rows: np.ndarray
    index: np.ndarray
    label: np.ndarray
    priority: np.ndarray


class SamplePool:
    """The ``k`` lowest-priority rows of each of ``num_groups`` groups of a stream, in bounded memory.

    ``group_of_label``: None = one group (a sample of all rows), else rows are grouped by label (a
    per-class sample, ``num_groups`` classes). ``threshold``: rows above it are never kept (see
    :func:`inclusion_threshold`). ``max_rows``: an upper bound on the rows this pool can see (sizes the
    buffer; its pages are only touched as rows arrive).
    """

    def __init__(
        self,
        k: int,
        num_groups: int,
        dim: int,
        dtype: np.dtype,
        max_rows: int,
        batch_rows: int,
        per_label: bool,
        threshold: np.uint64 = MAX_PRIORITY,
        slack: float = 0.25,
        what: str = "features",
    ) -> None:
        self.k, self.num_groups, self.dim, self.per_label = int(k), int(num_groups), int(dim), per_label
        self.dtype = np.dtype(dtype)
        self.what = what
        keep = min(self.k * self.num_groups, max_rows)
        self.capacity = max(1, min(max_rows, keep + max(int(slack * keep), batch_rows)))
        self.rows = np.empty((self.capacity, self.dim), dtype=self.dtype)
        self.index = np.empty(self.capacity, dtype=np.int64)
        self.label = np.empty(self.capacity, dtype=np.int64)
        self.priority = np.empty(self.capacity, dtype=np.uint64)
        self.threshold = np.full(self.num_groups, threshold, dtype=np.uint64)
        self.size = 0
        self.compactions = 0

    def groups(self, labels: np.ndarray) -> np.ndarray:
        """The group of each row: its label (per-class sample) or 0."""
        return labels if self.per_label else np.zeros(len(labels), dtype=np.int64)

    def candidates(self, priority: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows that may enter the sample (at or under their group's threshold)."""
        return priority <= self.threshold[self.groups(labels)]

    def add(self, rows: np.ndarray, priority: np.ndarray, index: np.ndarray, labels: np.ndarray) -> None:
        """Offer rows with their priorities, indices and labels (filtered by :meth:`candidates` or not)."""
        keep = self.candidates(priority, labels)
        if not keep.all():
            rows, priority, index, labels = rows[keep], priority[keep], index[keep], labels[keep]
        n = len(priority)
        if n == 0:
            return
        if self.size + n > self.capacity:
            self.compact()
        if self.size + n > self.capacity:
            raise RuntimeError(f"sample pool overflow: {self.size} + {n} rows > {self.capacity}")
        end = self.size + n
        self.rows[self.size : end] = to_storage(np.asarray(rows), self.dtype, self.what)
        self.priority[self.size : end] = priority
        self.index[self.size : end] = index
        self.label[self.size : end] = labels
        self.size = end

    def compact(self) -> None:
        """Keep the ``k`` best rows of each group (in place, order kept) and lower the thresholds."""
        n = self.size
        pos = bottom_k(self.priority[:n], self.index[:n], self.groups(self.label[:n]), self.k)
        for lo in range(0, len(pos), _COMPACT_CHUNK):  # pos[i] >= i: moving forward never overwrites a source
            src = pos[lo : lo + _COMPACT_CHUNK]
            self.rows[lo : lo + len(src)] = self.rows[src]
        for array in (self.priority, self.index, self.label):
            array[: len(pos)] = array[pos]
        self.size = len(pos)
        self.compactions += 1
        groups = self.groups(self.label[: self.size])
        counts = np.bincount(groups, minlength=self.num_groups)
        top = np.zeros(self.num_groups, dtype=np.uint64)
        np.maximum.at(top, groups, self.priority[: self.size])
        full = counts >= self.k
        self.threshold[full] = np.minimum(self.threshold[full], top[full])

    def finish(self) -> Sample:
        """The sample: the ``k`` best rows of each group, sorted by row index (views of the buffer)."""
        self.compact()
        n = self.size
        index = self.index[:n]
        if n > 1 and not bool(np.all(index[1:] > index[:-1])):  # arrivals out of index order
            order = np.argsort(index, kind="stable")
            self.rows[:n] = self.rows[:n][order]
            for array in (self.priority, self.index, self.label):
                array[:n] = array[:n][order]
        return Sample(self.rows[:n], self.index[:n], self.label[:n], self.priority[:n])
