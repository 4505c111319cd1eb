"""Tiny-ImageNet (200 classes, 64×64) from the official ``tiny-imagenet-200`` folder.

Class indices follow the *sorted* wnids (the order ``torchvision.datasets.ImageFolder`` gives, as in the
reference code). The official validation set (50 images per class) is split deterministically into our
"val" and "test" splits: within each class the file names are sorted as strings, the first half (25) is "val"
and the second half (25) is "test". A folder already split into ``train/ val/ test/`` with one sub-folder per
class is used as it is.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from letkd.data.download import download_dataset, how_to_download
from letkd.data.errors import DatasetFormatError, DatasetNotFoundError
from letkd.data.files import ImageFileDataset
from letkd.data.locate import find_dataset_dir

FOLDER = "tiny-imagenet-200"
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


def _image_files(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)


def _check(folder: Path) -> str | None:
    if not (folder / "train").is_dir():
        return "no train/ folder"
    if (folder / "val" / "val_annotations.txt").is_file() or (folder / "test").is_dir():
        return None
    return "no val/val_annotations.txt (official layout) and no test/ folder (pre-split layout)"


def class_ids(folder: Path) -> list[str]:
    """Sorted wnids: from ``wnids.txt`` if present, else the sub-folders of ``train/``."""
    wnids_file = folder / "wnids.txt"
    if wnids_file.is_file():
        wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    else:
        wnids = [d.name for d in (folder / "train").iterdir() if d.is_dir()]
    if not wnids:
        raise DatasetFormatError(f"{folder}: no classes found (empty wnids.txt / train/)")
    return sorted(set(wnids))


def _class_folder_samples(split_dir: Path, wnids: list[str]) -> list[tuple[str, int]]:
    samples = []
    for label, wnid in enumerate(wnids):
        d = split_dir / wnid / "images" if (split_dir / wnid / "images").is_dir() else split_dir / wnid
        if not d.is_dir():
            raise DatasetFormatError(f"{split_dir}: no folder for class {wnid}")
        samples += [(str(d / f), label) for f in _image_files(d)]
    if not samples:
        raise DatasetFormatError(f"{split_dir}: no images found")
    return samples


def split_official_val(annotations: Path, wnids: list[str]) -> dict[str, list[tuple[str, int]]]:
    """Read ``val_annotations.txt``, split each class's images in halves ``{"val": [...], "test": [...]}``."""
    index = {w: i for i, w in enumerate(wnids)}
    per_class: dict[str, list[str]] = defaultdict(list)
    for n, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DatasetFormatError(f"{annotations}:{n}: expected '<file>\\t<wnid>\\t...', got {line!r}")
        per_class[parts[1]].append(parts[0])
    images_dir = annotations.parent / "images"
    out: dict[str, list[tuple[str, int]]] = {"val": [], "test": []}
    for wnid in wnids:
        names = sorted(per_class.get(wnid, []))
        half = len(names) // 2
        out["val"] += [(str(images_dir / f), index[wnid]) for f in names[:half]]
        out["test"] += [(str(images_dir / f), index[wnid]) for f in names[half:]]
    return out


def samples_for(folder: Path, split: str) -> list[tuple[str, int]]:
    """``(path, label)`` of every image in ``split`` ("train", "val" or "test")."""
    wnids = class_ids(folder)
    if split == "train":
        return _class_folder_samples(folder / "train", wnids)
    annotations = folder / "val" / "val_annotations.txt"
    if annotations.is_file():
        samples = split_official_val(annotations, wnids)[split]
        missing = [p for p, _ in samples if not os.path.isfile(p)]
        if missing:
            raise DatasetFormatError(
                f"{annotations} names {len(missing)} files that do not exist, e.g. {missing[0]}"
            )
        return samples
    return _class_folder_samples(folder / split, wnids)


def find_folder(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The ``tiny-imagenet-200`` folder; with ``download`` a missing one is fetched first."""
    try:
        return find_dataset_dir("tiny_imagenet", root, [FOLDER], _check, how_to_download("tiny_imagenet"))
    except DatasetNotFoundError:
        if not download:
            raise
    return download_dataset("tiny_imagenet", root, _check)


def load(split: str, root: str | os.PathLike | None = None, download: bool = False, transform=None):
    """One Tiny-ImageNet split: :class:`ImageFileDataset` of ``(3, 64, 64)`` images."""
    folder = find_folder(root, download)
    return ImageFileDataset(samples_for(folder, split), transform, classes=class_ids(folder))
