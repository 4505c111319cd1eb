"""Dataset registry: ``register_dataset``, ``create_dataset(name, split)``, ``dataset_info(name)``,
``list_datasets()``. Datasets of one's own register the same way from a config's ``imports:`` or an entry
point of group ``letkd.datasets`` (docs/extending.md)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import Dataset

from letkd.data import cifar, digits, fashion_mnist, imagenet, tiny_imagenet
from letkd.data import transforms as T
from letkd.plugins import Registry, UnknownNameError

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: classes, served image size ``(channels, image_size, image_size)``,
    normalisation statistics and the split names it accepts."""

    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    splits: tuple[str, ...]
    channels: int = 3


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its facts, its loader and how to build its two standard transforms."""

    info: DatasetInfo
    load: Callable[..., Dataset]  # load(split, root=None, download=False, transform=None) -> Dataset
    train_transform: Callable[[DatasetInfo], Transform]
    test_transform: Callable[[DatasetInfo], Transform]


def _normalize(info: DatasetInfo) -> Transform:
    return T.normalize(info.mean, info.std)


class UnknownDatasetError(UnknownNameError):
    """Raised for a dataset name that nothing registers; the message lists the known ones."""


DATASETS: Registry[DatasetEntry] = Registry("dataset", "letkd.datasets", UnknownDatasetError)


def register_dataset(
    name: str,
    info: DatasetInfo,
    train_transform: Callable[[DatasetInfo], Transform] = _normalize,
    test_transform: Callable[[DatasetInfo], Transform] = _normalize,
) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator: make ``load(split, root=None, download=False, transform=None) -> Dataset`` available as
    ``name``.

    ``load`` returns the items ``(image, label int)`` of one of ``info.splits`` with ``transform`` applied to
    each raw ``uint8 (C, H, W)`` image (``None``: no transform), and a ``.targets`` list of int labels.
    ``train_transform`` / ``test_transform`` build the standard transforms from ``info`` (default for both:
    normalisation with ``info.mean`` / ``info.std``, no augmentation).
    """

    def deco(load: Callable[..., Dataset]) -> Callable[..., Dataset]:
        DATASETS.add(name, DatasetEntry(info, load, train_transform, test_transform), origin=load)
        return load

    return deco


_TRAIN_TEST = ("train", "test")
_TRAIN_VAL_TEST = ("train", "val", "test")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

register_dataset(
    # statistics of the 60,000 training images as served (zero-padded to 32×32), test_data recomputes them
    "fashion_mnist",
    DatasetInfo(10, 32, (0.2190,) * 3, (0.3318,) * 3, _TRAIN_TEST),
    lambda i: T.crop_flip(i.mean, i.std, 32, padding=4),
)(fashion_mnist.load)
register_dataset(
    "cifar10",
    DatasetInfo(10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), _TRAIN_TEST),
    lambda i: T.crop_flip(i.mean, i.std, 32, padding=4, padding_mode="reflect"),
)(partial(cifar.load, cifar.CIFAR10))
register_dataset(
    "cifar100",
    DatasetInfo(100, 32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), _TRAIN_TEST),
    lambda i: T.crop_flip(i.mean, i.std, 32, padding=4, padding_mode="reflect"),
)(partial(cifar.load, cifar.CIFAR100))
register_dataset(
    "tiny_imagenet",
    DatasetInfo(200, 64, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), _TRAIN_VAL_TEST),
    lambda i: T.rotate_flip(i.mean, i.std, degrees=20),
)(tiny_imagenet.load)
register_dataset(
    "imagenet",
    DatasetInfo(1000, 224, _IMAGENET_MEAN, _IMAGENET_STD, _TRAIN_VAL_TEST),
    lambda i: T.resized_crop_flip(i.mean, i.std, 224),
    lambda i: T.resize_center_crop(i.mean, i.std, 256, 224),
)(imagenet.load)
register_dataset(
    # statistics of the 1,437 training images as served (upsampled to 32×32), test_data recomputes them
    "digits",
    DatasetInfo(10, 32, (0.3054,) * 3, (0.3237,) * 3, _TRAIN_TEST),
    lambda i: T.crop_flip(i.mean, i.std, 32, padding=2, flip=False),
)(digits.load)


def list_datasets() -> list[str]:
    """Names accepted by :func:`create_dataset`, sorted (built-in and registered ones)."""
    return DATASETS.names()


def _entry(name: str) -> DatasetEntry:
    return DATASETS.get(name)


def dataset_info(name: str) -> DatasetInfo:
    """Number of classes, image size, mean/std and splits of dataset ``name`` (no data is read)."""
    return _entry(name).info


def get_transform(name: str, kind: str, crop_padding: str | None = None) -> Transform:
    """The standard ``"train"`` (augmenting) or ``"test"`` transform of dataset ``name``: uint8 ``(3, H, W)``
    → normalised float32 ``(3, S, S)``. ``crop_padding`` (``"constant"``: zeros, or ``"reflect"``)
    replaces the border mode of a training transform's padded random crop; ``None`` keeps the dataset's."""
    entry = _entry(name)
    if kind == "train":
        transform = entry.train_transform(entry.info)
        if crop_padding is not None and isinstance(transform, T.RandomCropFlipNormalize):
            norm = transform.normalize
            transform = T.crop_flip(
                norm.mean, norm.std, transform.size, transform.padding, crop_padding, transform.flip
            )
        return transform
    if kind == "test":
        return entry.test_transform(entry.info)
    raise ValueError(f"transform kind must be 'train' or 'test', got {kind!r}")


def create_dataset(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    transform: str | Transform | None = "auto",
    download: bool = False,
    crop_padding: str | None = None,
) -> Dataset:
    """Dataset ``name``'s ``split``; items are ``(image float32 (3, H, W), label int)``.

    ``transform``: ``"auto"`` = the training transform for split "train", the test transform otherwise;
    ``"train"`` / ``"test"`` force one of them (``"test"`` on training images is what feature extraction
    uses); a callable on ``uint8 (3, H, W)`` tensors is used as is; ``None`` gives the raw ``uint8`` images.
    ``crop_padding``: the border mode of the training transform's random crop (see :func:`get_transform`).
    Every dataset has ``.targets`` (list of int labels). Missing files raise :class:`DatasetNotFoundError`;
    with ``download=True`` CIFAR-10/100, Tiny-ImageNet and Fashion-MNIST are fetched first (docs/data.md).
    """
    entry = _entry(name)
    if split not in entry.info.splits:
        valid = ", ".join(entry.info.splits)
        raise ValueError(f"dataset {name!r} has no split {split!r}; valid splits: {valid}")
    if isinstance(transform, str):
        if transform not in ("auto", "train", "test"):
            raise ValueError(f"transform must be 'auto', 'train', 'test', a callable or None: {transform!r}")
        kind = ("train" if split == "train" else "test") if transform == "auto" else transform
        transform = get_transform(name, kind, crop_padding)
    elif transform is not None and not callable(transform):
        raise TypeError(f"transform must be a string, a callable or None, got {type(transform).__name__}")
    return entry.load(split, root=root, download=download, transform=transform)
