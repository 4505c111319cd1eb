"""Training sets for contrastive methods (CRD): each item also carries its index and sampled negatives.

``ContrastSampleDataset(dataset, num_negatives, seed)[i]`` is ``(image, label, {"index": i,
"contrast_index": LongTensor(K+1)})`` where column 0 is ``i`` and the K negatives are drawn from the samples
of *other* classes (RepDistiller's ``CIFAR100InstanceSample(mode='exact')``), or from all other samples when
the dataset has no ``.targets`` — without replacement, as RepDistiller's ``np.random.choice(..., replace=
K > pool)``: K distinct samples whenever the pool holds K, with replacement only when it holds fewer (small
datasets). The draw depends only on ``(seed, epoch, i)``, so a
resumed run sees the same negatives; the trainer calls :meth:`ContrastSampleDataset.set_epoch` before each
epoch (loaders of such datasets do not keep persistent workers, which would miss the new epoch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class ContrastSampleDataset(Dataset):
    """Wraps ``dataset``; see the module docs."""

    def __init__(self, dataset: Dataset, num_negatives: int, seed: int = 0) -> None:
        if len(dataset) < 2:
            raise ValueError("a contrastive training set needs at least two samples")
        self.dataset, self.num_negatives, self.seed, self.epoch = dataset, num_negatives, seed, 0
        targets = getattr(dataset, "targets", None)
        self.labels = np.asarray(targets, dtype=np.int64) if targets is not None else None
        self._others: dict[int, np.ndarray] = {}
        if self.labels is not None:
            for c in np.unique(self.labels):
                others = np.flatnonzero(self.labels != c)
                if len(others) == 0:
                    raise ValueError("a contrastive training set needs samples of at least two classes")
                self._others[int(c)] = others

    def set_epoch(self, epoch: int) -> None:
        """Negatives are redrawn for each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def negatives(self, index: int) -> np.ndarray:
        """The K negative indices of sample ``index`` in the current epoch, ``(K,)``."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        k = self.num_negatives
        if self.labels is not None:
            pool = self._others[int(self.labels[index])]
            return pool[rng.choice(len(pool), k, replace=k > len(pool))]
        draw = rng.choice(len(self) - 1, k, replace=k > len(self) - 1)
        return draw + (draw >= index)  # every index but ``index``

    def __getitem__(self, index: int):
        image, label = self.dataset[index][:2]
        contrast = torch.from_numpy(np.concatenate([[index], self.negatives(index)]).astype(np.int64))
        return image, label, {"index": index, "contrast_index": contrast}
