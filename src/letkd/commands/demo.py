"""``letkd demo``: on the real Fashion-MNIST, one teacher and one student trained with vanilla, KD, QuEST,
letKD-1 and letKD-2 on the same budget; prints the comparison table and writes a plot.

:func:`run_demo` trains (or reuses) the teacher of ``configs/fashion_mnist/demo/teacher.yaml``, then runs
each method's config of that folder through :func:`letkd.pipeline.run_pipeline`, and prints a table
(teacher accuracy; per method best and last top-1, extra parameters, seconds per epoch) plus a plot of
test accuracy per epoch. A method whose run folder already holds a completed run of the same config is
not trained again (``fresh=True`` re-runs everything).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from letkd.config import RunConfig

EPILOG = """\
The configs live in configs/fashion_mnist/demo/ (teacher.yaml plus one file per method); a method whose
run folder already holds a completed run of the same config is reused (--fresh re-runs everything).
Fashion-MNIST is looked for in $LETKD_DATA, ./data and /usr/share/datasets/fashion-mnist.

examples:
  letkd demo
  letkd demo --methods vanilla letkd1 --out runs/my-demo
  letkd demo train.channels_last=true
"""


DEMO_DIR = Path("configs/fashion_mnist/demo")
DEMO_METHODS = ("vanilla", "kd", "quest", "letkd1", "letkd2")


def locate_demo_configs(config_dir: str | Path | None = None) -> Path:
    """The folder of the demo configs: the given one, ``./configs/fashion_mnist/demo``, or the copy in a
    source checkout of the package."""
    candidates = (
        [Path(config_dir)] if config_dir else [DEMO_DIR, Path(__file__).resolve().parents[3] / DEMO_DIR]
    )
    for folder in candidates:
        if (folder / "teacher.yaml").is_file():
            return folder
    raise FileNotFoundError(
        "demo configs not found (looked in " + ", ".join(str(c) for c in candidates) + "); run from the "
        "letkd source folder or pass --configs DIR"
    )


STAMP = "demo-config.yaml"


def _completed_with(run_dir: Path, cfg: RunConfig) -> bool:
    """True when ``run_dir`` already holds a completed demo run of exactly ``cfg``."""
    from letkd.engine.rundir import SUMMARY

    summary, saved = run_dir / SUMMARY, run_dir / STAMP
    if not (summary.is_file() and saved.is_file()):
        return False
    try:
        done = json.loads(summary.read_text()).get("status") == "completed"
    except json.JSONDecodeError:
        return False
    return done and saved.read_text() == cfg.to_yaml()


def run_demo(
    out: str | Path = "runs/demo",
    methods: tuple[str, ...] = DEMO_METHODS,
    overrides: list[str] | None = None,
    config_dir: str | Path | None = None,
    device: str | None = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run the demo and return ``{"table": markdown, "report": {paths}, "runs": {method: run_dir}}``."""
    from letkd.config import load_config
    from letkd.engine.rundir import BEST, LAST, METRICS, SUMMARY
    from letkd.pipeline import run_pipeline
    from letkd.report import collect_runs, summarize, to_markdown, write_outputs
    from letkd.utils import atomic_write_text

    folder = locate_demo_configs(config_dir)
    out = Path(out)
    start = time.perf_counter()
    runs: dict[str, Path] = {}
    missing = [m for m in methods if not (folder / f"{m}.yaml").is_file()]
    if missing:
        raise FileNotFoundError(f"no demo config for method {missing[0]!r} in {folder}")
    for method in methods:
        path = folder / f"{method}.yaml"
        cfg = load_config(path, overrides)
        cfg.train.device = device or cfg.train.device
        run_dir = out / method
        runs[method] = run_dir
        if not fresh and _completed_with(run_dir, cfg):
            print(f"[demo] {method}: reusing the completed run in {run_dir}", file=sys.stderr)
            continue
        print(f"[demo] {method}: training ({path})", file=sys.stderr, flush=True)
        for stale in (SUMMARY, METRICS, LAST, BEST):
            (run_dir / stale).unlink(missing_ok=True)
        summary = run_pipeline(cfg, run_dir=run_dir, device=device)
        if summary.get("status") == "completed":
            atomic_write_text(run_dir / STAMP, cfg.to_yaml())
    rows = summarize(collect_runs([runs[m] for m in methods]))
    order = {m: i for i, m in enumerate(methods)}
    rows.sort(key=lambda r: order.get(r.label, len(order)))
    paths = write_outputs(rows, out / "report")
    table = to_markdown(rows)
    minutes = (time.perf_counter() - start) / 60
    print(table)
    print(f"report: {paths['markdown']}  plot: {paths['plot']}  ({minutes:.1f} min)")
    return {"table": table, "report": paths, "runs": runs}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd demo``."""
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
    """Handler of ``letkd demo``; failures are raised and reported as one line by :func:`letkd.cli.main`."""
    run_demo(args.out, tuple(args.methods), args.overrides, args.configs, args.device, args.fresh)
    return 0
