"""A dataset of ``uint8`` images held in one tensor in memory, transformed on the fly."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset


class InMemoryImageDataset(Dataset):
    """Images ``uint8 (N, C, H, W)`` (C = 1 or 3) and integer labels; items are ``(transform(img), label)``.

    Grey images (C = 1) are replicated to 3 channels (a view, no copy) before the transform, so every item
    is ``(3, H, W)``. With ``transform=None`` items are the raw ``uint8 (3, H, W)`` tensors.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: Sequence[int],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        classes: Sequence[str] | None = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(targets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(targets)} labels")
        self.images = images
        self.targets: list[int] = [int(t) for t in targets]
        self.transform = transform
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index].expand(3, -1, -1)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"{type(self).__name__}(n={n}, stored=({c}, {h}, {w}), transform={self.transform})"
