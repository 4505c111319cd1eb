"""Fashion-MNIST from the official IDX files, served as ``(3, 32, 32)``.

The 28×28 grey images are zero-padded by 2 pixels on each side to 32×32 and replicated to 3 channels.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch

from letkd.data.errors import DatasetFormatError
from letkd.data.locate import find_dataset_dir, missing_files
from letkd.data.memory import InMemoryImageDataset

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBDIRS = ["fashion-mnist", "FashionMNIST/raw"]  # our folder name, torchvision's
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60_000, "test": 10_000}
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
PAD = 2  # 28 + 2 * 2 = 32
HOW_TO_GET = (
    "To get it: 'sudo apt-get install dataset-fashion-mnist' (installs to /usr/share/datasets/fashion-mnist),"
    " or download the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist"
    " (folder data/fashion) into $LETKD_DATA/fashion-mnist, or pass download=True."
)
_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed) of unsigned bytes into an array of its shape."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetFormatError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetFormatError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES or ndim == 0:
        raise DatasetFormatError(f"{path}: unsupported IDX type 0x{type_code:02x} with {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DatasetFormatError(f"{path}: size {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=_IDX_DTYPES[type_code], offset=header).reshape(shape)


def _resolve(folder: Path, name: str) -> Path:
    return folder / name if (folder / name).is_file() else folder / f"{name}.gz"


def _check(folder: Path) -> str | None:
    return missing_files(folder, [n for pair in FILES.values() for n in pair], allow_gz=True)


@functools.lru_cache(maxsize=4)
def _load_arrays(images_path: str, labels_path: str, _stamp: tuple) -> tuple[torch.Tensor, list[int]]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetFormatError(f"{images_path}: expected images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetFormatError(f"{labels_path}: {labels.shape} labels for {images.shape[0]} images")
    if labels.size and labels.max() >= len(CLASSES):
        raise DatasetFormatError(f"{labels_path}: label {labels.max()} out of range 0..{len(CLASSES) - 1}")
    padded = torch.zeros((images.shape[0], 1, 28 + 2 * PAD, 28 + 2 * PAD), dtype=torch.uint8)
    padded[:, 0, PAD:-PAD, PAD:-PAD] = torch.from_numpy(images.copy())
    return padded, labels.tolist()


def _download(root: str | os.PathLike | None) -> Path:
    from torchvision.datasets import FashionMNIST

    from letkd.data.download import DATA_FOLDER_FIX, download_base
    from letkd.data.fetch import fetch_file

    folder = download_base(root) / "fashion-mnist"
    for filename, md5 in FashionMNIST.resources:
        fetch_file(
            FashionMNIST.mirrors[0] + filename,
            folder / filename,
            md5=md5,
            fix=DATA_FOLDER_FIX,
            store="the data folder",
        )
    return folder


def find_folder(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The folder holding the four IDX files (see module docs for the search order)."""
    try:
        return find_dataset_dir("fashion_mnist", root, SUBDIRS, _check, HOW_TO_GET, extra=[SYSTEM_DIR])
    except FileNotFoundError:
        if not download:
            raise
    return _download(root)


def load(split: str, root: str | os.PathLike | None = None, download: bool = False, transform=None):
    """Fashion-MNIST ``split`` ("train" 60,000 / "test" 10,000) as an :class:`InMemoryImageDataset`."""
    folder = find_folder(root, download)
    img_path, lbl_path = (_resolve(folder, n) for n in FILES[split])
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in (img_path, lbl_path))
    images, labels = _load_arrays(str(img_path.resolve()), str(lbl_path.resolve()), stamp)
    return InMemoryImageDataset(images, labels, transform, classes=CLASSES)
