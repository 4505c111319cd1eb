"""A dataset of image files on disk, decoded to ``uint8 (3, H, W)`` tensors on access."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from letkd.data.errors import DatasetFormatError


def read_rgb(path: str | Path) -> torch.Tensor:
    """Decode an image file with PIL to ``uint8 (3, H, W)`` RGB (grey, palette and CMYK are converted)."""
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetFormatError(f"{path}: cannot decode image ({exc})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ImageFileDataset(Dataset):
    """``(path, label)`` samples; items are ``(transform(read_rgb(path)), label)``.

    With ``transform=None`` items are the raw ``uint8 (3, H, W)`` tensors.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        classes: Sequence[str] | None = None,
    ):
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.targets: list[int] = [y for _, y in self.samples]
        self.transform = transform
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        img = read_rgb(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, transform={self.transform})"
