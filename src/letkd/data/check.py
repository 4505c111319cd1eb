"""Is a bring-your-own dataset complete? ``letkd data check imagenet [ROOT]`` counts the images of each split
and class of an ImageNet folder (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``) against ILSVRC-2012's
figures — 1,281,167 training and 50,000 validation images, 1000 classes, 50 validation images per class —
and reports everything that is missing or misplaced at once: absent splits, missing or extra classes,
classes with fewer images than expected, validation images not yet sorted into class folders, empty class
folders and files that are not images.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from letkd.utils import tqdm_disable

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SHOWN = 5  # classes named per problem (then "and N more")


@dataclass(frozen=True)
class Expected:
    """What a complete folder holds: images per split, classes, images per validation class (None = any)."""

    train_images: int
    val_images: int
    classes: int
    val_per_class: int | None


IMAGENET = Expected(train_images=1_281_167, val_images=50_000, classes=1000, val_per_class=50)


@dataclass
class SplitCount:
    """Images per class folder of one split, loose images beside them, files that are not images."""

    per_class: dict[str, int] = field(default_factory=dict)
    loose_images: int = 0
    other_files: int = 0

    @property
    def images(self) -> int:
        return sum(self.per_class.values())


@dataclass
class CheckResult:
    """The counts, the problems found (empty: complete) and the report's lines."""

    folder: Path
    counts: dict[str, SplitCount]
    problems: list[str]

    @property
    def complete(self) -> bool:
        return not self.problems


def _names(items: Iterable[str]) -> str:
    items = sorted(items)
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def count_split(folder: Path, progress: bool = False) -> SplitCount:
    """Count the images of each class folder of ``folder`` (one level deep), and what lies beside them."""
    count = SplitCount()
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in tqdm(entries, desc=folder.name, leave=False, disable=tqdm_disable(progress)):
        if entry.is_dir():
            with os.scandir(entry.path) as files:
                names = [f.name for f in files if f.is_file()]
            count.per_class[entry.name] = sum(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in names)
            count.other_files += sum(Path(n).suffix.lower() not in IMAGE_SUFFIXES for n in names)
        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            count.loose_images += 1
        else:
            count.other_files += 1
    return count


def check_image_folders(
    folder: str | os.PathLike, expected: Expected = IMAGENET, progress: bool = False
) -> CheckResult:
    """Count ``folder/train`` and ``folder/val`` and compare them with ``expected`` (see the module docs)."""
    folder = Path(folder)
    problems: list[str] = []
    counts: dict[str, SplitCount] = {}
    for split in ("train", "val"):
        if not (folder / split).is_dir():
            problems.append(f"no {split}/ folder in {folder}")
            continue
        counts[split] = count_split(folder / split, progress)
    for split, want in (("train", expected.train_images), ("val", expected.val_images)):
        c = counts.get(split)
        if c is None:
            continue
        if c.images < want:
            problems.append(f"{split}: {c.images:,} of {want:,} images ({want - c.images:,} missing)")
        elif c.images > want:
            problems.append(
                f"{split}: {c.images:,} images, {c.images - want:,} more than the {want:,} expected"
            )
        if len(c.per_class) != expected.classes:
            problems.append(f"{split}: {len(c.per_class)} class folders, {expected.classes} expected")
        empty = [k for k, n in c.per_class.items() if n == 0]
        if empty:
            problems.append(f"{split}: {len(empty)} empty class folder(s): {_names(empty)}")
        if c.loose_images:
            hint = " (sort them into class folders, e.g. with valprep.sh)" if split == "val" else ""
            problems.append(f"{split}: {c.loose_images:,} images outside class folders{hint}")
        if c.other_files:
            problems.append(f"{split}: {c.other_files:,} files that are not images (.JPEG/.jpg/.png)")
    train, val = counts.get("train"), counts.get("val")
    if train and val:
        missing = set(train.per_class) - set(val.per_class)
        extra = set(val.per_class) - set(train.per_class)
        if missing:
            problems.append(f"val: {len(missing)} class(es) of train/ missing: {_names(missing)}")
        if extra:
            problems.append(
                f"val: {len(extra)} class(es) not in train/ (their labels are unknown): {_names(extra)}"
            )
    if val and expected.val_per_class:
        short = {k: n for k, n in val.per_class.items() if 0 < n < expected.val_per_class}
        if short:
            shown = _names(f"{k} ({n})" for k, n in short.items())
            problems.append(
                f"val: {len(short)} class(es) with fewer than {expected.val_per_class} images: {shown}"
            )
    return CheckResult(folder, counts, problems)


def report_lines(result: CheckResult, name: str = "ImageNet") -> list[str]:
    """The report: one line per split, then every problem, then the verdict."""
    lines = [f"{name} at {result.folder}:"]
    for split, c in result.counts.items():
        lines.append(f"  {split:<5} {c.images:>10,} images in {len(c.per_class)} class folders")
    lines += [f"  problem: {p}" for p in result.problems]
    lines.append("complete" if result.complete else f"incomplete: {len(result.problems)} problem(s)")
    return lines
