"""ImageNet (ILSVRC-2012) in the usual ImageFolder layout: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.

The public test set has no labels, so split "test" is the validation folder (as is usual for ImageNet).
Class indices are the sorted class folders of ``train/`` for every split, so a ``val/`` folder missing a class
still gets the right labels.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision.datasets import ImageFolder

from letkd.data.errors import DatasetFormatError
from letkd.data.files import read_rgb
from letkd.data.locate import find_dataset_dir

HOW_TO_GET = (
    "ImageNet is bring-your-own: its licence requires registering at https://image-net.org, so it is never "
    "downloaded automatically (download=True / --download does not apply). To get it: download "
    "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org, extract them into "
    "'imagenet/train/<wnid>/' and 'imagenet/val/<wnid>/' (the validation images sorted into class folders, "
    "e.g. with the widely used valprep.sh) under $LETKD_DATA (or ./data, or the root you pass)."
)
SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "val"}


def _check(folder: Path) -> str | None:
    missing = [s for s in ("train", "val") if not (folder / s).is_dir()]
    return f"missing {', '.join(s + '/' for s in missing)}" if missing else None


class ClassFolderDataset(ImageFolder):
    """:class:`ImageFolder` that decodes to ``uint8 (3, H, W)`` tensors and takes its classes from
    ``classes_dir`` (the training folder) rather than from the split's own folder."""

    def __init__(self, split_dir: str | os.PathLike, classes_dir: str | os.PathLike, transform=None):
        self._classes_dir = Path(classes_dir)
        super().__init__(str(split_dir), transform=transform, loader=read_rgb, allow_empty=True)
        if not self.samples:
            raise DatasetFormatError(
                f"{split_dir}: no images in folders named after the classes of {classes_dir} "
                "(the validation images must be sorted into class folders)"
            )

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        """Sorted class folders of the training folder; a class absent from this split gets no samples."""
        classes = sorted(e.name for e in os.scandir(self._classes_dir) if e.is_dir())
        if not classes:
            raise DatasetFormatError(f"{self._classes_dir}: no class folders")
        return classes, {c: i for i, c in enumerate(classes)}


def load(split: str, root: str | os.PathLike | None = None, download: bool = False, transform=None):
    """One ImageNet split ("train", "val"; "test" = "val") as a :class:`ClassFolderDataset` (``download``
    is ignored: ImageNet is never fetched, see :data:`HOW_TO_GET`)."""
    folder = find_dataset_dir("imagenet", root, ["imagenet", "ILSVRC2012"], _check, HOW_TO_GET)
    return ClassFolderDataset(folder / SPLIT_FOLDERS[split], folder / "train", transform)
