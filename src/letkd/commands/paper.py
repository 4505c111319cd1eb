"""``letkd paper [ID]``: the paper's tables and figures — what each measures, its configs, the exact commands,
its runs and an estimate of its GPU-hours; with an id, just that entry's commands."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  letkd paper                         # every table and figure, its commands, runs and estimated cost
  letkd paper table5                  # the commands of Table 5 (a shell script: letkd paper table5 | sh)
  letkd paper --epoch-seconds cifar100=20 --epoch-seconds imagenet=1500
  letkd report sweeps/table5 --layout table5     # the table beside the paper's numbers, once the runs end

The GPU-hours are ESTIMATES: training-step ratios measured on a CPU (benchmarks/bench_methods_step.py) times
an assumed vanilla epoch time per dataset on one GPU (--epoch-seconds replaces it with yours); no GPU has
run these configs yet. Config paths are relative to the repository root (run it there).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd paper``."""
    p = subparsers.add_parser(
        "paper",
        help="the paper's tables and figures: configs, commands, runs, estimated GPU-hours",
        description="List each table and figure of the letKD paper with what it measures, its configs, the "
        "exact sweep and report commands, the number of runs and an estimate of its GPU-hours; with ID, "
        "print only that entry's commands.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "entry", nargs="?", metavar="ID", help="table1 ... table6 or fig1: print its commands only"
    )
    p.add_argument(
        "--epoch-seconds", action="append", default=[], metavar="DATASET=S",
        help="seconds of one vanilla epoch on your GPU for DATASET (repeatable), replacing the assumed one",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the entries as one JSON object")
    p.set_defaults(func=run)
    return p


def _seconds(items: list[str], defaults: dict[str, float]) -> dict[str, float]:
    from letkd.config import ConfigError

    seconds = dict(defaults)
    for item in items:
        dataset, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not sep or not dataset or not number > 0:
            raise ConfigError(f"--epoch-seconds {item!r}: expected DATASET=SECONDS, e.g. cifar100=12")
        seconds[dataset] = number
    return seconds


def run(args: argparse.Namespace) -> int:
    """Handler of ``letkd paper``."""
    from letkd.config import ConfigError
    from letkd.report.paper_data import load_paper_results
    from letkd.report.plan import entry_commands, overview, plan_entry, repo_root

    results = load_paper_results()
    seconds = _seconds(args.epoch_seconds, results.cost.epoch_seconds)
    try:
        entries = [results.entry(args.entry)] if args.entry else results.entries
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    root = repo_root()
    plans = [plan_entry(e, results, root, seconds) for e in entries]
    if args.json:
        print(json.dumps({
            "estimated": "GPU-hours from CPU step ratios and assumed epoch times; no GPU measured",
            "epoch_seconds": seconds,
            "entries": [{"id": p.entry.id, "title": p.entry.title, "measures": p.entry.measures,
                         "configs": [c for s in p.sweeps for c in s.configs], "runs": p.runs,
                         "teachers_trained_first": sorted(p.teachers), "gpu_hours_estimate": p.gpu_hours,
                         "commands": p.entry.commands()} for p in plans],
        }, indent=1))  # fmt: skip
    elif args.entry:
        print(entry_commands(plans[0]), end="")
    else:
        print(overview(plans, seconds), end="")
    return 0
