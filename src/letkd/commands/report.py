"""``letkd report RUN_DIR... [--out DIR]``: Markdown/CSV tables and an accuracy plot across run folders."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  letkd report runs/                          # every run folder below runs/
  letkd report runs/cifar100-resnet56_resnet20-letkd2 runs/cifar100-resnet56_resnet20-kd --out results
  letkd report runs/ --include-unfinished     # also runs still training (from metrics.jsonl)
  letkd report sweeps/table1 --layout pairs   # the paper's Table 1 layout beside the published numbers
  letkd report sweeps/table5 --layout table5  # one table or figure of the paper by its id (letkd paper)

A run folder holds config.yaml, metrics.jsonl and summary.json (as written by 'letkd train' and
'letkd run'). Runs whose configs differ only by seed (and by paths, device or worker settings) form one
group; each group gets n, best and last test top-1 as mean ± sample std over its runs, teacher top-1,
the parameters the method adds, and seconds per epoch. Methods are labelled letkd1/letkd2 by their
number of KD layers. Writes DIR/report.md, DIR/report.csv and DIR/accuracy.png (test top-1 per epoch,
mean over seeds) and prints the table. Folders that cannot be used (missing or corrupt files, diverged
or unfinished runs) are listed with the reason on stderr and in report.md.

--layout pairs lays the groups out as the paper's tables: methods as rows (Teacher, Student, KD, ...,
letKD-1, letKD-2), teacher->student pairs as columns (RN56->RN20, ...), our mean ± std over seeds (n runs)
beside the published number and the difference, best-epoch and last-epoch tables; it also writes
DIR/pairs.md and DIR/pairs.csv and prints those tables instead of the group table.

--layout table1 ... table6, fig1 lays the runs out as that table or figure of the paper (the list and the
commands that make its runs: 'letkd paper'): Tables 1-3 as above with that table's numbers; Tables 4-6 and
Fig. 1 one line per configuration of the ablation (runs matched by what their configs say), mean ± std, n,
the paper's number and the difference, written to DIR/<id>.md and DIR/<id>.csv (Fig. 1 also as
DIR/fig1.png with the paper's points).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd report``."""
    p = subparsers.add_parser(
        "report",
        help="tables and plots across run folders",
        description="Summarise run folders: group runs by configuration over seeds, write a Markdown table, "
        "a CSV and an accuracy plot, and print the table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths", nargs="+", metavar="RUN_DIR", help="run folders, or folders to search recursively"
    )
    p.add_argument("--out", metavar="DIR", default="report", help="output folder (default: ./report)")
    p.add_argument(
        "--include-unfinished",
        action="store_true",
        help="also use runs without summary.json or not completed (best/last from metrics.jsonl)",
    )
    from letkd.report.layouts import layout_names

    p.add_argument(
        "--layout",
        choices=layout_names(),
        default="groups",
        help="groups: one line per configuration (default); pairs: the paper's tables (methods x "
        "teacher->student pairs) beside the published numbers, also written to pairs.md / pairs.csv; "
        "table1 ... table6, fig1: that table or figure of the paper (see 'letkd paper')",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``letkd report``; returns 1 if no usable run folder is found."""
    from pathlib import Path

    from letkd.report import (
        ReportError,
        SkippedRun,
        collect_runs,
        repeat_notes,
        summarize,
        to_markdown,
        write_outputs,
    )

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ReportError(
            f"--out {args.out} is a file; give a folder (it receives report.md, report.csv ...)"
        )
    skipped: list[SkippedRun] = []
    try:
        records = collect_runs(args.paths, skipped, include_unfinished=args.include_unfinished)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for s in skipped:
        print(f"warning: skipped {s.path}: {s.reason}", file=sys.stderr)
    if not records:
        print("error: no usable runs found", file=sys.stderr)
        return 1
    rows = summarize(records)
    for note in repeat_notes(rows):
        print(f"warning: {note}", file=sys.stderr)
    written = write_outputs(rows, args.out, skipped)
    if args.layout != "groups":
        from letkd.report.layouts import write_layout

        text, files = write_layout(args.layout, records, args.out)
        written.update(files)
        print(text, end="")
    else:
        print(to_markdown(rows), end="")
    runs = f"{len(records)} run{'s' * (len(records) != 1)}"
    groups = f"{len(rows)} group{'s' * (len(rows) != 1)}"
    print(f"\n{runs} in {groups}; wrote " + ", ".join(str(p) for p in written.values()))
    return 0
