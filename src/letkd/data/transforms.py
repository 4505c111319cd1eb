"""Standard train/test transforms (SPEC §4.6), applied to ``uint8`` image tensors ``(3, H, W)``.

Every transform ends with float conversion to [0, 1] and per-channel normalisation, giving
``float32 (3, S, S)``. The crop/flip/normalise chain used by the 32×32 datasets is fused into one small
module (:class:`RandomCropFlipNormalize`) that draws the same random crop and flip as torchvision's
``RandomCrop → RandomHorizontalFlip → ToDtype → Normalize`` at about a quarter of the per-image cost; the
larger datasets use ``torchvision.transforms.v2`` followed by the fused :class:`NormalizeImage`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


class NormalizeImage(torch.nn.Module):
    """``uint8 (C, H, W)`` → ``float32 (C, H, W)``: ``(x / 255 − mean) / std`` in one multiply-add."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
        self.mean, self.std = tuple(mean), tuple(std)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).float(), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).float(), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Normalise one image ``(C, H, W)`` (or a batch ``(B, C, H, W)``) of uint8 values."""
        return torch.addcmul(self.shift, img.to(torch.float32), self.scale)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class RandomCropFlipNormalize(torch.nn.Module):
    """RandomCrop(size, padding, padding_mode) → [RandomHorizontalFlip(0.5)] → normalise, on uint8 (C, H, W).

    The crop offset is uniform over the ``2·padding + H − size + 1`` positions per axis, as in torchvision;
    ``padding_mode`` is ``"constant"`` (zeros) or ``"reflect"`` (mirror without repeating the edge pixel).
    """

    def __init__(
        self,
        size: int,
        padding: int,
        mean: Sequence[float],
        std: Sequence[float],
        padding_mode: str = "constant",
        flip: bool = True,
    ):
        super().__init__()
        if padding_mode not in ("constant", "reflect"):
            raise ValueError(f"padding_mode must be 'constant' or 'reflect', got {padding_mode!r}")
        self.size, self.padding, self.padding_mode, self.flip = size, padding, padding_mode, flip
        self.normalize = NormalizeImage(mean, std)
        self._tables: dict[int, torch.Tensor] = {}

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Crop, maybe flip and normalise one image ``(C, H, W)`` → ``float32 (C, size, size)``."""
        h, w = img.shape[-2:]
        p, s = self.padding, self.size
        n_i, n_j = h + 2 * p - s + 1, w + 2 * p - s + 1
        # one call to torch's generator for offsets and flip (so DataLoader worker seeding applies)
        u_i, u_j, u_flip = torch.rand(3).tolist()
        i, j = min(int(u_i * n_i), n_i - 1), min(int(u_j * n_j), n_j - 1)
        flip = self.flip and u_flip < 0.5
        if self.padding_mode == "reflect" and p:
            # gather rows/cols through reflected index tables: torch's reflection_pad2d spreads even a 32×32
            # image over all intra-op threads, which costs milliseconds per image on a busy machine
            rows = self._reflected(h)[i : i + s]
            cols = self._reflected(w)[j : j + s]
            out = img.index_select(-2, rows).index_select(-1, cols.flip(0) if flip else cols)
        else:
            out = (F.pad(img, (p, p, p, p)) if p else img)[..., i : i + s, j : j + s]
            if flip:
                out = out.flip(-1)
        return self.normalize(out)

    def _reflected(self, n: int) -> torch.Tensor:
        """Source index of every position of an axis of length ``n`` reflect-padded by ``padding``."""
        table = self._tables.get(n)
        if table is None:
            if self.padding >= n:
                raise ValueError(f"reflect padding {self.padding} needs images larger than {n} pixels")
            k = torch.arange(-self.padding, n + self.padding).abs()
            table = self._tables[n] = torch.where(k >= n, 2 * (n - 1) - k, k)
        return table

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, padding={self.padding}, padding_mode={self.padding_mode!r}, flip={self.flip}"
        )


def normalize(mean: Sequence[float], std: Sequence[float]) -> NormalizeImage:
    """Test transform for fixed-size datasets: uint8 → float in [0, 1] → normalise."""
    return NormalizeImage(mean, std)


def crop_flip(
    mean: Sequence[float],
    std: Sequence[float],
    size: int,
    padding: int,
    padding_mode: str = "constant",
    flip: bool = True,
) -> RandomCropFlipNormalize:
    """RandomCrop(size, padding) [→ RandomHorizontalFlip] → normalise (CIFAR, Fashion-MNIST, digits)."""
    return RandomCropFlipNormalize(size, padding, mean, std, padding_mode=padding_mode, flip=flip)


def rotate_flip(mean: Sequence[float], std: Sequence[float], degrees: float = 20.0) -> v2.Compose:
    """RandomRotation(degrees) → RandomHorizontalFlip → normalise (Tiny-ImageNet; no crop)."""
    return v2.Compose([v2.RandomRotation(degrees), v2.RandomHorizontalFlip(), NormalizeImage(mean, std)])


def resized_crop_flip(mean: Sequence[float], std: Sequence[float], size: int = 224) -> v2.Compose:
    """RandomResizedCrop(size) → RandomHorizontalFlip → normalise (ImageNet training)."""
    return v2.Compose(
        [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), NormalizeImage(mean, std)]
    )


def resize_center_crop(
    mean: Sequence[float], std: Sequence[float], resize: int = 256, size: int = 224
) -> v2.Compose:
    """Resize(resize) → CenterCrop(size) → normalise (ImageNet evaluation)."""
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), NormalizeImage(mean, std)])
