"""``letkd inspect``: pictures of what the KD layers of a run decide on test images (see docs/inspect.md)."""

from __future__ import annotations

import argparse

EPILOG = """\
Writes into RUN/inspect/ (or --out): maps_<layer>.png (image | student argmax template | teacher target
argmax per location), usage_<layer>.png, agreement.png, kl_per_epoch.png, maps.npz, inspect.json and
index.md, the page that shows them. Nothing is fitted: the supervision artefacts must be in the cache the
run used (supervision.cache_dir); relative paths in the run's config are read from the current folder.

examples:
  letkd inspect runs/digits-letkd2/20240101-120000
  letkd inspect runs/cifar100-letkd2/seed0 --images 4 --out figures/letkd2 --device cuda
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd inspect``."""
    p = subparsers.add_parser(
        "inspect",
        help="pictures of the KD layers' template choices (student vs teacher) on test images",
        description=(
            "Rebuild the student (with its KD layers), the teacher and the cached supervision of a letkd or "
            "quest run folder and picture, per KD layer, the student's and the teacher's argmax template "
            "per location, template usage, student-teacher agreement and the per-epoch KL."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="run folder written by letkd run (holds config.yaml, best.pt)")
    p.add_argument("--images", type=int, default=8, metavar="N", help="test images pictured (default: 8)")
    p.add_argument(
        "--stats-images",
        type=int,
        default=512,
        metavar="M",
        help="test images behind usage and agreement (default: 512; capped at the test set)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN/inspect)")
    p.add_argument("--checkpoint", metavar="FILE", help="checkpoint in RUN (default: best.pt, else last.pt)")
    p.add_argument("--device", default="auto", metavar="D", help="cpu, cuda, mps or auto (default)")
    p.add_argument("--data-root", metavar="R", help="dataset folder (default: the run's data.root)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``letkd inspect``."""
    from pathlib import Path

    from letkd.commands import options
    from letkd.device import select_device
    from letkd.inspection import inspect_run, load_run
    from letkd.inspection_plots import write_inspection

    # failures (not a KD run, missing artefact or checkpoint, ...) become one line in letkd.cli.main
    options.in_range("--images", args.images, 1)
    options.in_range("--stats-images", args.stats_images, 1)
    out = Path(args.out) if args.out else Path(args.run) / "inspect"
    options.output_folder("--out", out)
    loaded = load_run(args.run, select_device(args.device), args.data_root, args.checkpoint)
    result = inspect_run(loaded, args.images, args.stats_images, progress=True)
    written = write_inspection(loaded, result, out)
    for r in result.layers:
        print(
            f"{r.info.name}: agreement top-1 {100 * r.agreement_top1:.1f}%  "
            f"top-5 {100 * r.agreement_top5:.1f}%  over {r.locations} locations"
        )
    print(f"wrote {written['index.md']}")
    return 0
