"""``letkd data check imagenet [ROOT]``: is a bring-your-own dataset folder complete?"""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  letkd data check imagenet                     # looks in $LETKD_DATA/imagenet, ./data/imagenet, ...
  letkd data check imagenet /datasets/ILSVRC2012

Counts the images of train/<wnid>/ and val/<wnid>/ against ILSVRC-2012 (1,281,167 training and 50,000
validation images, 1000 classes, 50 validation images per class) and lists everything missing or
misplaced at once: absent splits, missing or extra classes, short classes, validation images not sorted
into class folders, empty folders, files that are not images. Exit status 0 when complete, 1 otherwise.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd data``."""
    p = subparsers.add_parser(
        "data",
        help="check a dataset folder (letkd data check imagenet [ROOT])",
        description="Check that a dataset folder is complete.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("check",), help="check: count its images against the official figures")
    p.add_argument("dataset", choices=("imagenet",), help="the dataset (ImageNet: never downloaded)")
    p.add_argument("root", nargs="?", metavar="ROOT", help="its folder (default: where letkd looks for it)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``letkd data check``: prints the report; 1 when something is missing."""
    from pathlib import Path

    from letkd.data.check import check_image_folders, report_lines
    from letkd.data.imagenet import HOW_TO_GET
    from letkd.data.locate import find_dataset_dir

    def has_splits(folder: Path) -> str | None:
        return None if (folder / "train").is_dir() or (folder / "val").is_dir() else "no train/ or val/"

    folder = find_dataset_dir("imagenet", args.root, ["imagenet", "ILSVRC2012"], has_splits, HOW_TO_GET)
    result = check_image_folders(folder, progress=sys.stderr.isatty())
    print("\n".join(report_lines(result)))
    return 0 if result.complete else 1
