"""Tables and plots across run folders: group runs that differ only by seed, mean ± std over seeds.

A run folder (written by :mod:`letkd.engine`) holds ``config.yaml``, ``metrics.jsonl`` (one JSON object per
epoch) and ``summary.json``. :func:`collect_runs` reads them, :func:`summarize` groups the runs by
(dataset, teacher, student, method label, config) and :func:`write_report` writes ``report.md``,
``report.csv`` and ``accuracy.png``.

Runs are in the same group when their configs are identical except for the seed and settings that do not
change the experiment (paths, device, progress bars, worker counts); the config ``name`` is compared with a
trailing seed suffix (``-seed3``, ``_s3``) removed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import statistics
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from letkd.utils import atomic_write_bytes, atomic_write_text

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
MARKDOWN, CSV, PLOT = "report.md", "report.csv", "accuracy.png"

#: config entries that do not change the experiment (besides ``seed``): ignored when grouping runs
IGNORED_KEYS = (
    ("name",),
    ("seed",),
    ("data", "root"),
    ("data", "num_workers"),
    ("model", "checkpoint"),
    ("teacher", "checkpoint"),
    ("teacher", "train_config"),
    ("teacher", "check_accuracy"),
    ("teacher", "compile"),
    ("supervision", "cache_dir"),
    ("supervision", "seed"),
    ("train", "device"),
    ("train", "progress"),
    ("train", "compile"),
    ("train", "channels_last"),
    ("train", "deterministic"),
    ("train", "reuse_host_memory"),
    ("teacher", "channels_last"),
    ("teacher", "fold_batchnorm"),
)
_SEED_SUFFIX = re.compile(r"[-_.]?(?:seed|s)[-_]?\d+$", re.IGNORECASE)


class ReportError(ValueError):
    """The report cannot be made (no such path, no run folders found)."""


@dataclass(frozen=True)
class SkippedRun:
    """A folder that looked like a run but could not be used, and why."""

    path: Path
    reason: str


@dataclass
class RunRecord:
    """One run folder's facts. Accuracies in %; ``epochs`` and ``test_top1`` are the per-epoch curve."""

    path: Path
    name: str  # config name without a trailing seed suffix
    seed: int
    dataset: str
    teacher: str | None
    student: str
    method: str  # registry name, e.g. "letkd"
    label: str  # short label, e.g. "letkd2"
    variant: str  # hash of the config without seed and run-environment settings
    status: str
    best_top1: float
    last_top1: float
    best_epoch: int | None = None
    teacher_top1: float | None = None
    parameters: int | None = None
    extra_parameters: int | None = None
    seconds_per_epoch: float | None = None
    epochs: list[int] = field(default_factory=list)
    test_top1: list[float | None] = field(default_factory=list)

    @property
    def group_key(self) -> tuple[str, str, str, str, str, str]:
        """Runs with equal keys differ only by seed."""
        return (self.dataset, self.teacher or "", self.student, self.label, self.name, self.variant)


@dataclass
class GroupRow:
    """One line of the report: the runs of one configuration over seeds."""

    dataset: str
    teacher: str | None
    student: str
    method: str
    label: str
    config: str
    variant: str
    n: int
    seeds: list[int]
    best_mean: float
    best_std: float | None  # sample standard deviation (n − 1); None for a single run
    last_mean: float
    last_std: float | None
    teacher_top1: float | None
    parameters: int | None
    extra_parameters: int | None
    seconds_per_epoch: float | None
    runs: list[Path]
    curve: list[tuple[int, float]]  # (epoch, mean test top-1 over the runs that evaluated that epoch)
    display: str = ""  # method label as shown in the table (made unique within its dataset/teacher/student)


# ------------------------------------------------------------------------------------------- reading runs


def method_label(method: str, params: dict[str, Any] | None) -> str:
    """Short label of a method: ``letkd1`` / ``letkd2`` by the number of KD layers, else the method name."""
    layers = (params or {}).get("layers")
    if method == "letkd" and isinstance(layers, list):
        return f"letkd{len(layers)}"
    return method


def strip_seed_suffix(name: str) -> str:
    """``cifar100-resnet56_resnet20-letkd2-seed3`` → ``cifar100-resnet56_resnet20-letkd2``."""
    stripped = _SEED_SUFFIX.sub("", name)
    return stripped or name


def config_variant(config: dict[str, Any]) -> str:
    """Short hash of ``config`` without the :data:`IGNORED_KEYS` (equal for runs that differ only by seed).

    A config that parses is first completed with the defaults of every key it leaves out, so a run saved
    before a new option existed groups with later runs that use that option's default.
    """
    import copy

    from letkd.config import ConfigError, config_from_dict

    try:
        data = config_from_dict(copy.deepcopy(config)).model_dump(mode="json")
    except (ConfigError, ValueError, TypeError):
        data = copy.deepcopy(config)
    for path in IGNORED_KEYS:
        node = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path.name}: cannot read ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: not a mapping")
    return data


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path.name} line {n}: not valid JSON") from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise ValueError(f"{path.name} line {n}: expected an object with 'epoch'")
        rows.append(row)
    return rows


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_run(folder: Path, include_unfinished: bool = False) -> RunRecord:
    """Read one run folder; raises ``ValueError`` with the reason when it cannot be used."""
    config = _read_yaml(folder / CONFIG)
    summary: dict[str, Any] = {}
    if (folder / SUMMARY).is_file():
        try:
            summary = json.loads((folder / SUMMARY).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{SUMMARY}: not valid JSON ({exc})") from None
        if not isinstance(summary, dict):
            raise ValueError(f"{SUMMARY}: not an object")
    elif not include_unfinished:
        raise ValueError(f"no {SUMMARY} (unfinished run; --include-unfinished uses {METRICS})")
    rows = _read_metrics(folder / METRICS) if (folder / METRICS).is_file() else []
    if not summary and not rows:
        raise ValueError(f"neither {SUMMARY} nor {METRICS}")
    status = str(summary.get("status", "completed" if summary else "running"))
    if summary and status != "completed" and not include_unfinished:
        raise ValueError(f"status {status!r}" + (f": {summary['error']}" if summary.get("error") else ""))

    evaluated = [(int(r["epoch"]), _number(r.get("test_top1"))) for r in rows]
    scores = [(e, a) for e, a in evaluated if a is not None]
    best = _number(summary.get("best_top1"))
    last = _number(summary.get("last_top1"))
    best_epoch = summary.get("best_epoch")
    if best is None and scores:
        best_epoch, best = max(scores, key=lambda ea: (ea[1], -ea[0]))
    if last is None and scores:
        last = scores[-1][1]
    if best is None or last is None:
        raise ValueError("no test accuracy recorded")

    def section(key: str) -> dict[str, Any]:
        value = config.get(key)
        return value if isinstance(value, dict) else {}

    method = str(section("method").get("name", "vanilla"))
    teacher = section("teacher").get("name") if config.get("teacher") else None
    seconds = _number(summary.get("seconds_per_epoch"))
    if seconds is None and rows:
        per_epoch = [s for s in (_number(r.get("seconds")) for r in rows) if s is not None]
        seconds = statistics.fmean(per_epoch) if per_epoch else None
    return RunRecord(
        path=folder,
        name=strip_seed_suffix(str(config.get("name") or folder.parent.name)),
        seed=int(config.get("seed", 0)),
        dataset=str(section("data").get("name", "?")),
        teacher=str(teacher) if teacher else None,
        student=str(section("model").get("name", "?")),
        method=method,
        label=method_label(method, section("method").get("params")),
        variant=config_variant(config),
        status=status,
        best_top1=best,
        last_top1=last,
        best_epoch=int(best_epoch) if isinstance(best_epoch, int) else None,
        teacher_top1=_number(summary.get("teacher_top1")),
        parameters=summary.get("parameters") if isinstance(summary.get("parameters"), int) else None,
        extra_parameters=(
            summary.get("extra_parameters") if isinstance(summary.get("extra_parameters"), int) else None
        ),
        seconds_per_epoch=seconds,
        epochs=[e for e, _ in evaluated],
        test_top1=[a for _, a in evaluated],
    )


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Folders holding a ``config.yaml``: each path itself if it is one, else every one below it (sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ReportError(f"no such file or folder: {p}")
        if p.is_file():
            p = p.parent if p.name in (CONFIG, METRICS, SUMMARY) else p
            if not p.is_dir():
                raise ReportError(f"{p} is a file; give run folders or folders that contain them")
        if (p / CONFIG).is_file():
            found.append(p)
        else:
            found += sorted(c.parent for c in p.rglob(CONFIG))
    unique = list(dict.fromkeys(f.resolve() for f in found))
    return unique


def collect_runs(
    paths: Iterable[str | Path],
    skipped: list[SkippedRun] | None = None,
    include_unfinished: bool = False,
) -> list[RunRecord]:
    """Read every run folder in or below ``paths``.

    Folders that cannot be used (missing or corrupt files, unfinished or diverged runs) are appended to
    ``skipped`` with the reason, or reported as warnings when ``skipped`` is None. Raises
    :class:`ReportError` when a path does not exist or no run folder is found at all.
    """
    folders = find_run_dirs(paths)
    if not folders:
        raise ReportError(f"no run folders (with {CONFIG}) found in: {', '.join(map(str, paths))}")
    records = []
    for folder in folders:
        try:
            records.append(read_run(folder, include_unfinished))
        except (ValueError, OSError) as exc:
            if skipped is None:
                warnings.warn(f"skipping {folder}: {exc}", stacklevel=2)
            else:
                skipped.append(SkippedRun(folder, str(exc)))
    return records


# ------------------------------------------------------------------------------------------- summarizing


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _common(values: Iterable[Any]) -> Any:
    """The value if all runs agree on it (ignoring missing ones), else None."""
    present = {v for v in values if v is not None}
    return present.pop() if len(present) == 1 else None


def _mean_curve(records: Sequence[RunRecord]) -> list[tuple[int, float]]:
    by_epoch: dict[int, list[float]] = {}
    for r in records:
        for epoch, acc in zip(r.epochs, r.test_top1):
            if acc is not None:
                by_epoch.setdefault(epoch, []).append(acc)
    return [(e, statistics.fmean(v)) for e, v in sorted(by_epoch.items())]


def summarize(records: Sequence[RunRecord]) -> list[GroupRow]:
    """One :class:`GroupRow` per group of runs that differ only by seed, sorted by dataset, teacher, student,
    method; mean ± sample std over the group's runs of the best-epoch and last-epoch test top-1."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.group_key, []).append(r)
    rows = []
    for _key, runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: (r.seed, str(r.path)))
        best_mean, best_std = _mean_std([r.best_top1 for r in runs])
        last_mean, last_std = _mean_std([r.last_top1 for r in runs])
        teacher_accs = [r.teacher_top1 for r in runs if r.teacher_top1 is not None]
        seconds = [r.seconds_per_epoch for r in runs if r.seconds_per_epoch is not None]
        first = runs[0]
        rows.append(
            GroupRow(
                dataset=first.dataset,
                teacher=first.teacher,
                student=first.student,
                method=first.method,
                label=first.label,
                config=first.name,
                variant=first.variant,
                n=len(runs),
                seeds=[r.seed for r in runs],
                best_mean=best_mean,
                best_std=best_std,
                last_mean=last_mean,
                last_std=last_std,
                teacher_top1=statistics.fmean(teacher_accs) if teacher_accs else None,
                parameters=_common(r.parameters for r in runs),
                extra_parameters=_common(r.extra_parameters for r in runs),
                seconds_per_epoch=statistics.fmean(seconds) if seconds else None,
                runs=[r.path for r in runs],
                curve=_mean_curve(runs),
            )
        )
    _set_display_labels(rows)
    return rows


def _set_display_labels(rows: list[GroupRow]) -> None:
    """Label shown per row: the method label, plus the config name (and variant) where that is ambiguous."""
    by_label: dict[tuple, list[GroupRow]] = {}
    for row in rows:
        by_label.setdefault((row.dataset, row.teacher, row.student, row.label), []).append(row)
    for same in by_label.values():
        for row in same:
            row.display = row.label
            if len(same) > 1:
                row.display = f"{row.label} ({row.config})"
                if sum(r.config == row.config for r in same) > 1:
                    row.display = f"{row.label} ({row.config} #{row.variant})"


# ------------------------------------------------------------------------------------------- writing


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _count(n: int | None) -> str:
    if n is None:
        return "—"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _opt(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def to_markdown(rows: Sequence[GroupRow]) -> str:
    """The groups as a Markdown table (accuracies in %, mean ± sample std over seeds)."""
    head = [
        "dataset", "teacher", "student", "method", "n", "best top-1", "last top-1",
        "teacher top-1", "extra params", "s/epoch",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * 6) + "|"]
    for r in rows:
        cells = [
            r.dataset, r.teacher or "—", r.student, r.display or r.label, str(r.n),
            _pm(r.best_mean, r.best_std), _pm(r.last_mean, r.last_std), _opt(r.teacher_top1, ".2f"),
            _count(r.extra_parameters), _opt(r.seconds_per_epoch, ".1f"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = [
    "dataset", "teacher", "student", "method", "label", "config", "variant", "n", "seeds",
    "best_top1_mean", "best_top1_std", "last_top1_mean", "last_top1_std", "teacher_top1",
    "parameters", "extra_parameters", "seconds_per_epoch", "runs",
]  # fmt: skip


def to_csv(rows: Sequence[GroupRow]) -> str:
    """The groups as CSV (full precision; empty cells for missing values)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        values = [
            r.dataset, r.teacher, r.student, r.method, r.display or r.label, r.config, r.variant, r.n,
            ";".join(map(str, r.seeds)), r.best_mean, r.best_std, r.last_mean, r.last_std, r.teacher_top1,
            r.parameters, r.extra_parameters, r.seconds_per_epoch, ";".join(map(str, r.runs)),
        ]  # fmt: skip
        writer.writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def plot_accuracy(rows: Sequence[GroupRow]) -> bytes:
    """PNG of test top-1 per epoch (mean over seeds), one panel per dataset, one line per group."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    datasets = sorted({r.dataset for r in rows})
    fig = Figure(figsize=(6.5 * max(1, len(datasets)), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(datasets)), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets):
        for r in (r for r in rows if r.dataset == dataset and r.curve):
            pair = f"{r.teacher}→{r.student}" if r.teacher else r.student
            epochs, accs = zip(*r.curve)
            ax.plot([e + 1 for e in epochs], accs, label=f"{pair} {r.display or r.label} (n={r.n})")
        ax.set_title(dataset)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_outputs(rows: Sequence[GroupRow], out_dir: str | Path, skipped: Sequence[SkippedRun] = ()) -> dict:
    """Write ``report.md`` (table, notes, skipped runs), ``report.csv`` and ``accuracy.png`` to ``out_dir``;
    returns ``{"markdown": Path, "csv": Path, "plot": Path}``."""
    out = Path(out_dir)
    text = ["# Results", "", to_markdown(rows)]
    text.append(
        "Top-1 test accuracy in %: *best* = highest over the epochs, *last* = final epoch; mean ± sample "
        "standard deviation over the n runs (seeds) of each group. *extra params*: parameters the method "
        "adds to the student (e.g. KD layers); *s/epoch*: wall-clock seconds per epoch."
    )
    if skipped:
        text += ["", "## Skipped runs", ""] + [f"- `{s.path}`: {s.reason}" for s in skipped]
    return {
        "markdown": atomic_write_text(out / MARKDOWN, "\n".join(text) + "\n"),
        "csv": atomic_write_text(out / CSV, to_csv(rows)),
        "plot": atomic_write_bytes(out / PLOT, plot_accuracy(rows)),
    }


def write_report(
    paths: Iterable[str | Path], out_dir: str | Path, include_unfinished: bool = False
) -> dict[str, Path]:
    """Collect the runs under ``paths``, group them and write the report files (see :func:`write_outputs`).

    Unusable runs are listed in ``report.md`` under "Skipped runs". Raises :class:`ReportError` if no usable
    run is found.
    """
    paths = list(paths)
    skipped: list[SkippedRun] = []
    records = collect_runs(paths, skipped, include_unfinished)
    if not records:
        reasons = "\n".join(f"  {s.path}: {s.reason}" for s in skipped)
        raise ReportError(f"no usable runs found; skipped:\n{reasons}")
    return write_outputs(summarize(records), out_dir, skipped)
