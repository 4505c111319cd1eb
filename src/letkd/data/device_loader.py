"""Batches of a small dataset held on the training device, augmented there (``data.on_device: true``).

The whole split is one ``uint8`` tensor on the device (CIFAR's 50,000 images: 150 MB, 240 MB once padded);
every batch is gathered, cropped, flipped and normalised by a few batched tensor operations, with no CPU
work per image. The random crop and flip follow the same distribution as the CPU transform
:class:`letkd.data.transforms.RandomCropFlipNormalize` (offset uniform over the ``H + 2·padding − size + 1``
positions per axis, flip with probability ½, same padding mode, mean and std); the draws come from the
loader's own ``torch.Generator`` on the device, which the trainer re-seeds at every epoch, so a resumed
run sees the same batches. The order comes from the same sampler the DataLoader path uses
(``DistributedSampler`` for training, which also shards by rank), so it is the DataLoader's order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler, Subset

from letkd.data.memory import InMemoryImageDataset
from letkd.data.transforms import NormalizeImage, RandomCropFlipNormalize


class DeviceLoaderError(ValueError):
    """The dataset cannot be held on the device (not in memory, or a transform with no batched twin)."""


def _unwrap(dataset: Dataset) -> tuple[InMemoryImageDataset, torch.Tensor | None]:
    """The in-memory dataset under any (nested) ``Subset`` and the indices into it (``None`` = all)."""
    indices: torch.Tensor | None = None
    while isinstance(dataset, Subset):
        idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        indices = idx if indices is None else idx[indices]
        dataset = dataset.dataset
    if not isinstance(dataset, InMemoryImageDataset):
        raise DeviceLoaderError(
            f"data.on_device needs a dataset held in memory as one tensor (cifar10, cifar100, fashion_mnist, "
            f"digits); got {type(dataset).__name__}: set data.on_device=false"
        )
    return dataset, indices


class DeviceLoader:
    """Iterable of ``(images float32 (B, 3, S, S), labels int64 (B,))`` batches, both on ``device``.

    ``dataset``: an :class:`~letkd.data.memory.InMemoryImageDataset` (or a ``Subset`` of one) whose
    transform is :class:`RandomCropFlipNormalize` (training) or :class:`NormalizeImage` (test); other
    datasets and transforms raise :class:`DeviceLoaderError`. ``sampler`` gives the order of each pass
    (default: sequential); a sampler with ``set_epoch`` is exposed as ``.sampler`` so the trainer can set
    the epoch, and ``.generator`` (on ``device``) drives the augmentation. Like a ``DataLoader``:
    ``len()`` is the number of batches and ``drop_last`` drops a last, smaller batch.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: torch.device | str,
        sampler: Sampler[int] | None = None,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        base, indices = _unwrap(dataset)
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last
        self.device = torch.device(device)
        self.sampler = sampler
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        transform = base.transform
        if isinstance(transform, RandomCropFlipNormalize):
            norm = transform.normalize
            self.size, self.padding, self.flip = transform.size, transform.padding, transform.flip
            self.crop = True
        elif isinstance(transform, NormalizeImage):
            norm, self.crop, self.flip, self.padding = transform, False, False, 0
            self.size = base.images.shape[-1]
        else:
            raise DeviceLoaderError(
                f"data.on_device supports the random crop/flip/normalise and normalise transforms, not "
                f"{type(transform).__name__}: set data.on_device=false"
            )
        images = base.images if indices is None else base.images[indices]
        targets = torch.as_tensor(base.targets, dtype=torch.long)
        self.labels = (targets if indices is None else targets[indices]).to(self.device)
        images = images.to(self.device)
        if self.crop and self.padding:
            images = _pad(images, self.padding, transform.padding_mode)
        self.images = images  # uint8 (N, 1|3, H + 2p, W + 2p)
        self.scale = norm.scale.to(self.device)  # (3, 1, 1)
        self.shift = norm.shift.to(self.device)
        self._ar = torch.arange(self.size, device=self.device)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else self.labels.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor:
        if self.sampler is None:
            return torch.arange(self.labels.shape[0], device=self.device)
        return torch.as_tensor(list(iter(self.sampler)), dtype=torch.long).to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        stop = (order.shape[0] // self.batch_size) * self.batch_size if self.drop_last else order.shape[0]
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.batch(idx), self.labels[idx]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Images ``idx (B,)``, augmented if the transform does, normalised: ``float32 (B, 3, S, S)``."""
        if self.crop:
            b, s = idx.shape[0], self.size
            n_i, n_j = self.images.shape[-2] - s + 1, self.images.shape[-1] - s + 1
            i = torch.randint(n_i, (b, 1), generator=self.generator, device=self.device)
            j = torch.randint(n_j, (b, 1), generator=self.generator, device=self.device)
            cols = self._ar.expand(b, s)
            if self.flip:
                flip = torch.rand(b, 1, generator=self.generator, device=self.device) < 0.5
                cols = torch.where(flip, s - 1 - self._ar, self._ar)
            rows, cols = i + self._ar, j + cols  # (B, S) source rows and columns in the padded images
            channels = torch.arange(self.images.shape[1], device=self.device)
            x = self.images[
                idx[:, None, None, None],
                channels[None, :, None, None],
                rows[:, None, :, None],
                cols[:, None, None, :],
            ]
        else:
            x = self.images[idx]
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return torch.addcmul(self.shift, x.to(torch.float32), self.scale)


def _pad(images: torch.Tensor, padding: int, mode: str) -> torch.Tensor:
    """``uint8 (N, C, H, W)`` padded on every side: zeros, or mirrored without repeating the edge pixel."""
    if mode == "constant":
        return F.pad(images, (padding,) * 4)
    h, w = images.shape[-2:]
    if padding >= min(h, w):
        raise DeviceLoaderError(f"reflect padding {padding} needs images larger than {min(h, w)} pixels")

    def table(n: int) -> torch.Tensor:
        k = torch.arange(-padding, n + padding, device=images.device).abs()
        return torch.where(k >= n, 2 * (n - 1) - k, k)

    return images.index_select(-2, table(h)).index_select(-1, table(w))
