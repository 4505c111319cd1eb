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
        print(summary_line(summary))
    return 0


def summary_line(summary: dict) -> str:
    """The last line of ``letkd train`` and ``letkd run``: accuracies, time and the run folder."""

    def pct(key: str) -> str:
        value = summary.get(key)
        return "n/a" if value is None else f"{value:.2f}%"

    teacher = f"teacher top-1 {pct('teacher_top1')}; " if summary.get("teacher_top1") is not None else ""
    extra = summary.get("extra_parameters")
    kept = f", {extra:,} extra parameters kept in the student" if extra else ""
    best_epoch, epochs = summary.get("best_epoch"), summary.get("epochs")
    # epochs counted from 1, as the progress lines count them (summary.json keeps its 0-based field)
    when = "n/a" if best_epoch is None else f"{best_epoch + 1}" + (f"/{epochs}" if epochs else "")
    return (
        f"{teacher}best top-1 {pct('best_top1')} (epoch {when}), "
        f"last top-1 {pct('last_top1')}{kept}, {summary.get('wall_seconds') or 0:.0f} s; "
        f"run folder: {summary.get('run_dir')}"
    )


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
