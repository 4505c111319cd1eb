"""``letkd demo``: train on the real Fashion-MNIST within minutes on a CPU and report test accuracy.

The demo is a list of stages (:data:`DEMO_STAGES`), each a config under ``configs/`` trained into its own
sub-folder of one run folder; adding a student is adding a stage.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoStage:
    """One training run of the demo: ``config`` (relative to ``configs/``) plus ``overrides``."""

    label: str
    config: str
    overrides: tuple[str, ...] = ()


DEMO_STAGES: tuple[DemoStage, ...] = (DemoStage("teacher", "fashion_mnist/teacher_wrn_16_2.yaml"),)

#: ``--quick``: a smoke test of the whole demo in seconds (the accuracy is then meaningless)
QUICK_OVERRIDES: tuple[str, ...] = (
    "train.epochs=1",
    "train.max_steps_per_epoch=3",
    "train.eval_every=1",
    "data.test_subset=200",
)


def configs_dir() -> Path:
    """The repository's ``configs/`` folder (next to ``src/``), else ``./configs``."""
    here = Path(__file__).resolve().parents[3] / "configs"
    return here if here.is_dir() else Path("configs")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd demo``."""
    stages = "\n".join(f"  {s.label:<10} configs/{s.config}" for s in DEMO_STAGES)
    p = subparsers.add_parser(
        "demo",
        help="train on Fashion-MNIST in a few CPU minutes and report test accuracy",
        description="Train the demo's models on the real Fashion-MNIST and print their test accuracy.",
        epilog=f"stages:\n{stages}\n\nFashion-MNIST is looked for in $LETKD_DATA, ./data and "
        "/usr/share/datasets/fashion-mnist.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/demo/<timestamp>)")
    p.add_argument("--device", metavar="D", help="cpu, cuda, mps (default: auto)")
    p.add_argument("--quick", action="store_true", help="a few steps per stage: checks the set-up only")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``letkd demo``: run every stage, then print a results table."""
    from letkd.config import ConfigError, load_config
    from letkd.data import DatasetNotFoundError
    from letkd.engine import train_from_config

    out = Path(args.out) if args.out else Path("runs") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    extra = QUICK_OVERRIDES if args.quick else ()
    results = []
    for stage in DEMO_STAGES:
        print(f"== {stage.label}: configs/{stage.config}", flush=True)
        try:
            cfg = load_config(configs_dir() / stage.config, [*stage.overrides, *extra])
            summary = train_from_config(cfg, out / stage.label, device=args.device)
        except (ConfigError, DatasetNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        results.append((stage, cfg.model.name, summary))
        print(
            f"{stage.label} {cfg.model.name}: test top-1 {summary['last_top1']:.2f}% "
            f"({summary['wall_seconds']:.0f} s), run folder {summary['run_dir']}",
            flush=True,
        )
    print("\nstage       model         test top-1   seconds")
    for stage, model, summary in results:
        print(f"{stage.label:<11} {model:<13} {summary['last_top1']:>9.2f}%  {summary['wall_seconds']:>8.0f}")
    print(f"\nall runs in {out}")
    return 0
