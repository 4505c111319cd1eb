"""``letkd demo``: on the real Fashion-MNIST, one teacher and one student trained with vanilla, KD, QuEST,
letKD-1 and letKD-2 on the same budget; prints the comparison table and writes a plot."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
The configs live in configs/fashion_mnist/demo/ (teacher.yaml plus one file per method); a method whose
run folder already holds a completed run of the same config is reused (--fresh re-runs everything).
Fashion-MNIST is looked for in $LETKD_DATA, ./data and /usr/share/datasets/fashion-mnist.

examples:
  letkd demo
  letkd demo --methods vanilla letkd1 --out runs/my-demo
  letkd demo train.channels_last=true
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd demo``."""
    from letkd.demo import DEMO_METHODS

    p = subparsers.add_parser(
        "demo",
        help="Fashion-MNIST: vanilla vs KD vs QuEST vs letKD-1 vs letKD-2 in minutes on a CPU",
        description="Distil one student with several methods on the real Fashion-MNIST and compare them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides applied to every student config"
    )
    p.add_argument("--out", metavar="DIR", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument(
        "--methods", nargs="+", default=list(DEMO_METHODS), metavar="M",
        help=f"methods to run (default: {' '.join(DEMO_METHODS)})",
    )  # fmt: skip
    p.add_argument(
        "--configs", metavar="DIR", help="folder of the demo configs (default: configs/fashion_mnist/demo)"
    )
    p.add_argument("--device", metavar="D", help="cpu, cuda, mps (default: auto)")
    p.add_argument("--fresh", action="store_true", help="re-run methods even when a completed run exists")
    p.set_defaults(func=handle)
    return p


def handle(args: argparse.Namespace) -> int:
    """Handler of ``letkd demo``."""
    from letkd.config import ConfigError
    from letkd.data import DatasetNotFoundError
    from letkd.demo import run_demo

    try:
        run_demo(args.out, tuple(args.methods), args.overrides, args.configs, args.device, args.fresh)
    except (ConfigError, DatasetNotFoundError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
