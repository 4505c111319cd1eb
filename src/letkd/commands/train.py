"""``letkd train CONFIG [key=value ...]``: train a model from a config (single process or under torchrun)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  letkd train configs/digits/resnet8.yaml
  letkd train configs/cifar100/teachers/resnet56.yaml train.epochs=3 data.batch_size=32
  letkd train configs/digits/resnet8.yaml --out runs/mine --resume
  letkd train configs/cifar100/teachers/resnet56.yaml --download    # fetch CIFAR-100 if missing
  torchrun --nproc_per_node=2 -m letkd train configs/cifar100/teachers/wrn_40_2.yaml

Overrides are dotted YAML assignments applied to the config before validation. The run folder
(default runs/<config name>/<timestamp>) receives config.yaml, metrics.jsonl, tb/, last.pt, best.pt
and summary.json. --resume continues from <run folder>/last.pt (without --out: the newest run of
this config); a missing or corrupt checkpoint is an error.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd train``."""
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train a model (method: vanilla) from a YAML config; runs DDP under torchrun.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config name>/<timestamp>)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run already in --out (its files are removed)"
    )
    p.add_argument("--resume", action="store_true", help="continue from last.pt in the run folder")
    p.add_argument("--device", metavar="D", help="cpu, cuda, cuda:1, mps (default: train.device, 'auto')")
    p.add_argument("--download", action="store_true", help="fetch a missing dataset (= data.download=true)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``letkd train``; failures are raised and reported by :func:`letkd.cli.main` (exit 1)."""
    from letkd.config import load_config
    from letkd.pipeline import train_from_config

    # every failure (config, data, checkpoint, divergence, run folder) becomes one line in letkd.cli.main
    overrides = [*args.overrides, "data.download=true"] if args.download else args.overrides
    cfg = load_config(args.config, overrides)
    summary = train_from_config(
        cfg, run_dir=args.out, resume=args.resume, device=args.device, overwrite=args.overwrite
    )
    if _is_main():
        print(
            f"best top-1 {summary['best_top1']:.2f}% "
            f"(epoch {summary['best_epoch'] + 1}/{summary['epochs']}), "
            f"last top-1 {summary['last_top1']:.2f}%, {summary['wall_seconds']:.0f} s; "
            f"run folder: {summary['run_dir']}"
        )
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
