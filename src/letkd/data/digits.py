"""scikit-learn's 8×8 handwritten digits (1797 images, bundled with scikit-learn), as ``(3, 32, 32)`` images.

Pixel values 0..16 are scaled to 0..255, upsampled bilinearly to 32×32 and replicated to 3 channels. The
train/test split is fixed: stratified, 1437 / 360 images, ``random_state=0``. Small enough for fast tests.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from letkd.data.memory import InMemoryImageDataset

TEST_SIZE = 360
SPLIT_SEED = 0
SIZE = 32


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    big = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = (big.clamp(0, 1) * 255).round().to(torch.uint8)
    index = np.arange(len(bunch.target))
    train_idx, test_idx = train_test_split(
        index, test_size=TEST_SIZE, stratify=bunch.target, random_state=SPLIT_SEED
    )
    return images, bunch.target.astype(np.int64), np.sort(train_idx), np.sort(test_idx)


def split_indices(split: str) -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` of the images in ``split`` ("train" / "test")."""
    _, _, train_idx, test_idx = _load_all()
    return {"train": train_idx, "test": test_idx}[split]


def load(split: str, root=None, download: bool = False, transform=None) -> InMemoryImageDataset:
    """The digits ``split`` as an :class:`InMemoryImageDataset` (``root`` and ``download`` are unused)."""
    images, targets, _, _ = _load_all()
    idx = torch.from_numpy(split_indices(split))
    labels = targets[idx.numpy()].tolist()
    return InMemoryImageDataset(images[idx], labels, transform, classes=[str(d) for d in range(10)])
