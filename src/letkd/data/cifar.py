"""CIFAR-10 / CIFAR-100 from the official python-pickle files, read with a numpy-only unpickler."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from letkd.data.download import download_dataset, how_to_download
from letkd.data.errors import DatasetFormatError, DatasetNotFoundError
from letkd.data.locate import find_dataset_dir, missing_files
from letkd.data.memory import InMemoryImageDataset
from letkd.data.safe_pickle import load_numpy_pickle


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files and which keys hold labels and class names."""

    name: str
    folder: str
    files: dict[str, tuple[str, ...]]
    label_key: str
    meta_file: str
    names_key: str
    num_classes: int
    torchvision_class: str


CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    label_key="labels",
    meta_file="batches.meta",
    names_key="label_names",
    num_classes=10,
    torchvision_class="CIFAR10",
)
CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    files={"train": ("train",), "test": ("test",)},
    label_key="fine_labels",
    meta_file="meta",
    names_key="fine_label_names",
    num_classes=100,
    torchvision_class="CIFAR100",
)


LAYOUTS = {layout.name: layout for layout in (CIFAR10, CIFAR100)}


def _how_to_get(layout: CifarLayout) -> str:
    return how_to_download(layout.name)


def _get(batch: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DatasetFormatError(f"{path}: no '{key}' entry (keys: {sorted(map(repr, batch))})")


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, list[int]]:
    """Read one official batch file → images ``uint8 (N, 3, 32, 32)`` and labels."""
    try:
        batch = load_numpy_pickle(path.read_bytes())
    except Exception as exc:  # UnpicklingError, EOFError, ValueError ... all mean: not a valid batch file
        raise DatasetFormatError(f"{path}: not a valid CIFAR batch file ({exc})") from None
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{path}: expected a dict, got {type(batch).__name__}")
    data = np.asarray(_get(batch, "data", path))
    labels = [int(x) for x in _get(batch, label_key, path)]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if len(labels) != data.shape[0]:
        raise DatasetFormatError(f"{path}: {data.shape[0]} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


@functools.lru_cache(maxsize=4)
def _load_split(folder: str, layout_name: str, split: str, _stamp: tuple):
    layout = LAYOUTS[layout_name]
    arrays, labels = [], []
    for fname in layout.files[split]:
        data, lab = read_batch(Path(folder) / fname, layout.label_key)
        arrays.append(data)
        labels += lab
    if labels and not 0 <= min(labels) <= max(labels) < layout.num_classes:
        raise DatasetFormatError(f"{folder}: labels outside 0..{layout.num_classes - 1}")
    images = torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays)))
    classes = None
    meta = Path(folder) / layout.meta_file
    if meta.is_file():
        try:
            names = _get(load_numpy_pickle(meta.read_bytes()), layout.names_key, meta)
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except Exception:  # class names are a convenience; a bad meta file must not block training
            classes = None
    return images, labels, classes


def find_folder(layout: CifarLayout, root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The folder holding the batch files (``<base>/<official folder>`` or ``<base>`` itself); with
    ``download`` a missing dataset is fetched first (see :mod:`letkd.data.download`)."""
    needed = [f for files in layout.files.values() for f in files]

    def check(folder: Path) -> str | None:
        return missing_files(folder, needed)

    try:
        return find_dataset_dir(layout.name, root, [layout.folder], check, _how_to_get(layout))
    except DatasetNotFoundError:
        if not download:
            raise
    return download_dataset(layout.name, root, check)


def load(layout: CifarLayout, split: str, root=None, download: bool = False, transform=None):
    """One CIFAR split ("train" / "test") as an :class:`InMemoryImageDataset` of ``(3, 32, 32)`` images."""
    folder = find_folder(layout, root, download)
    stats = [(f, (folder / f).stat()) for f in layout.files[split]]
    stamp = tuple((f, st.st_mtime_ns, st.st_size) for f, st in stats)
    images, labels, classes = _load_split(str(folder.resolve()), layout.name, split, stamp)
    return InMemoryImageDataset(images, labels, transform, classes=classes)
