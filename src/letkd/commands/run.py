"""``letkd run CONFIG [key=value ...]``: the whole chain — teacher, supervision, distillation, evaluation."""

from __future__ import annotations

import argparse
import json
import os

EPILOG = """\
examples:
  letkd run configs/digits/letkd2.yaml
  letkd run configs/cifar100/resnet56_resnet20/letkd2.yaml --download
  letkd run configs/cifar100/resnet56_resnet20/letkd1.yaml \\
      teacher.checkpoint=checkpoints/resnet56_vanilla/ckpt_epoch_240.pth
  letkd run configs/fashion_mnist/demo/letkd1.yaml seed=1 --out runs/fm-letkd1-s1
  letkd run ../configs/digits/kd.yaml          # paths inside a config are relative to its file
  torchrun --nproc_per_node=4 -m letkd run configs/cifar100/wrn_40_2_wrn_16_2/letkd2.yaml

Stages, each reused when it already exists: the teacher (teacher.checkpoint: a file, or a published
teacher such as crd:resnet56 fetched into the cache; or trained once from teacher.train_config into
runs/teachers/), its test accuracy (printed; checked for crd: teachers), the supervision artefacts
(K-means codebook / sub-classes, cached in supervision.cache_dir), then the student's training with
the method. The run folder receives config.yaml, metrics.jsonl, tb/, last.pt, best.pt, summary.json.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd run``."""
    p = subparsers.add_parser(
        "run",
        help="teacher → supervision → distill a student → evaluate, from one config",
        description="Run a distillation config end to end, reusing every artefact that already exists.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seed=1")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config name>/<timestamp>)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run already in --out (its files are removed)"
    )
    p.add_argument("--resume", action="store_true", help="continue the student run from last.pt")
    p.add_argument("--device", metavar="D", help="cpu, cuda, cuda:1, mps (default: train.device, 'auto')")
    p.add_argument("--download", action="store_true", help="fetch a missing dataset (= data.download=true)")
    p.add_argument(
        "--json", action="store_true", help="end with one JSON object (accuracies, run folder), not a line"
    )
    p.set_defaults(func=handle)
    return p


def handle(args: argparse.Namespace) -> int:
    """Handler of ``letkd run``; failures are raised and reported by :func:`letkd.cli.main` (exit 1)."""
    from letkd.commands.train import summary_line
    from letkd.config import load_config
    from letkd.pipeline import run_pipeline

    # every failure (config, data, checkpoint, divergence, run folder) becomes one line in letkd.cli.main
    overrides = [*args.overrides, "data.download=true"] if args.download else args.overrides
    cfg = load_config(args.config, overrides)
    summary = run_pipeline(
        cfg, run_dir=args.out, resume=args.resume, device=args.device, overwrite=args.overwrite
    )
    if os.environ.get("RANK", "0") == "0":
        keys = ("teacher_top1", "best_top1", "last_top1", "best_epoch", "extra_parameters", "run_dir")
        print(json.dumps({k: summary.get(k) for k in keys}) if args.json else summary_line(summary))
    return 0 if summary.get("status") == "completed" else 1
