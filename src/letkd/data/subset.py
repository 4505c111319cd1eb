"""Seeded subsets that keep the ``.targets`` attribute samplers and per-class statistics rely on."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Subset


class LabeledSubset(Subset):
    """:class:`torch.utils.data.Subset` with ``.targets`` (the labels of the chosen items, in order)."""

    def __init__(self, dataset: Dataset, indices):
        super().__init__(dataset, [int(i) for i in indices])
        parent = getattr(dataset, "targets", None)
        if parent is None:
            raise TypeError(f"{type(dataset).__name__} has no .targets attribute")
        self.targets: list[int] = [int(parent[i]) for i in self.indices]


def subset(dataset: Dataset, n: int, seed: int | None) -> LabeledSubset:
    """``n`` items of ``dataset``: a seeded random choice without replacement (kept in dataset order), or the
    first ``n`` items when ``seed`` is None. ``n`` larger than the dataset gives all of it."""
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    total = len(dataset)
    n = min(n, total)
    if seed is None:
        indices = np.arange(n)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    return LabeledSubset(dataset, indices)
