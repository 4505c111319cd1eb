"""``letkd probe RUN...``: linear separability of a student's intermediate features (the paper's Table 4)."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  letkd probe sweeps/table5/cifar100-resnet56_resnet20-table5-inter1_pen1/seed0
  letkd probe sweeps/table5                     # every run folder below it
  letkd probe runs/my-vanilla-run --tap layer3.0 --json
  letkd report sweeps/table5 --layout table4    # the probes beside the paper's Table 4

The student is rebuilt from RUN/best.pt (with its KD layers); its features at the tap are global-average-
pooled over the training set (no augmentation; --train-subset N for a seeded subset) and the test set, a
linear discriminant (scikit-learn's LinearDiscriminantAnalysis) is fitted on the training features and its
test accuracy reported. With a KD layer at the tap, both its input x and its output x̂ are probed. The tap
defaults to the run's sub-class (intermediate) KD layer, else the model's 'intermediate' tap. Writes
RUN/probe.json and prints one line per feature set.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd probe``."""
    p = subparsers.add_parser(
        "probe",
        help="linear (LDA) probe of a student's intermediate features (Table 4)",
        description="Fit a linear discriminant on the global-average-pooled features of a trained student at "
        "one tap (the KD layer's input and output where one is grafted) and report its test accuracy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or folders to search for them")
    p.add_argument("--tap", metavar="NAME", help="tap name or module path (default: see below)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="default: best")
    p.add_argument("--train-subset", type=int, metavar="N", help="a seeded subset of N training images")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="default: 256")
    p.add_argument("--device", default="auto", metavar="D", help="cpu, cuda, mps or auto (default)")
    p.add_argument("--json", action="store_true", help="print each result as one JSON line")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``letkd probe``; every run folder found is probed (exit status 1 if one fails)."""
    import sys
    from pathlib import Path

    from letkd.config import ConfigError
    from letkd.probe import probe_lines, probe_run
    from letkd.report.read import find_run_dirs

    if args.batch_size < 1 or (args.train_subset is not None and args.train_subset < 1):
        raise ConfigError("--batch-size and --train-subset must be at least 1")
    folders = find_run_dirs(args.runs)
    if not folders:
        raise ConfigError(f"no run folders (with config.yaml) in {' '.join(args.runs)}")
    failed = 0
    here = Path.cwd()
    for folder in folders:
        folder = folder.relative_to(here) if folder.is_relative_to(here) else folder  # shorter lines
        try:
            result = probe_run(
                folder, args.tap, args.checkpoint, args.device, args.train_subset, args.batch_size,
                progress=sys.stderr.isatty(),
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001  (one line per failed run; the others go on)
            if len(folders) == 1:
                raise
            from letkd.cli import error_message

            print(f"error: {folder}: {error_message(exc)}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps(result) if args.json else "\n".join(probe_lines(result)), flush=True)
    return 1 if failed else 0
