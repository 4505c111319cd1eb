"""The Fashion-MNIST demo: one teacher, one student trained with several methods on the same budget.

``letkd demo`` trains (or reuses) the teacher of ``configs/fashion_mnist/demo/teacher.yaml``, then runs
each method's config of that folder through :func:`letkd.pipeline.run_pipeline`, and prints a table
(teacher accuracy; per method best and last top-1, extra parameters, seconds per epoch) plus a plot of
test accuracy per epoch. A method whose run folder already holds a completed run of the same config is
not trained again (``fresh=True`` re-runs everything).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from letkd.config import RunConfig, load_config
from letkd.utils import atomic_write_text

DEMO_DIR = Path("configs/fashion_mnist/demo")
DEMO_METHODS = ("vanilla", "kd", "quest", "letkd1", "letkd2")


def locate_demo_configs(config_dir: str | Path | None = None) -> Path:
    """The folder of the demo configs: the given one, ``./configs/fashion_mnist/demo``, or the copy in a
    source checkout of the package."""
    candidates = (
        [Path(config_dir)] if config_dir else [DEMO_DIR, Path(__file__).resolve().parents[2] / DEMO_DIR]
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
    summary, saved = run_dir / "summary.json", run_dir / STAMP
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
    from letkd.pipeline import run_pipeline
    from letkd.report import collect_runs, summarize, to_markdown, write_outputs

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
        if cfg.teacher is not None and cfg.teacher.train_config:
            cfg.teacher.train_config = str(folder / "teacher.yaml")
        run_dir = out / method
        runs[method] = run_dir
        if not fresh and _completed_with(run_dir, cfg):
            print(f"[demo] {method}: reusing the completed run in {run_dir}", file=sys.stderr)
            continue
        print(f"[demo] {method}: training ({path})", file=sys.stderr, flush=True)
        for stale in ("summary.json", "metrics.jsonl", "last.pt", "best.pt"):
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
