"""Writing a report: the groups as a Markdown table, a CSV and an accuracy plot
(``report.md``, ``report.csv``, ``accuracy.png``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from letkd.report.read import ReportError, SkippedRun, collect_runs
from letkd.report.summary import GroupRow, seeds_text, summarize
from letkd.utils import atomic_write_bytes, atomic_write_text

MARKDOWN, CSV, PLOT = "report.md", "report.csv", "accuracy.png"


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


def _n_cell(row: GroupRow) -> str:
    extra = sum(len(paths) - 1 for paths in row.repeats.values())
    return f"{row.n} (+{extra} repeat{'s' * (extra != 1)})" if extra else str(row.n)


def to_markdown(rows: Sequence[GroupRow]) -> str:
    """The groups as a Markdown table (accuracies in %, mean ± sample std over the distinct seeds), with a
    column per varied setting (e.g. the keys of a grid sweep)."""
    varied = list(dict.fromkeys(k for r in rows for k in r.varied))
    head = [
        "dataset", "teacher", "student", "method", *varied, "n", "seeds", "epochs", "best top-1",
        "last top-1", "teacher top-1", "extra params", "s/epoch",
    ]  # fmt: skip
    align = ["---"] * (4 + len(varied)) + ["---:", "---", "---:"] + ["---:"] * 5
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        cells = [
            r.dataset, r.teacher or "—", r.student, r.table_label or r.display or r.label,
            *(r.varied.get(k, "—") for k in varied),
            _n_cell(r), seeds_text(r.seeds), r.epochs or "—", _pm(r.best_mean, r.best_std),
            _pm(r.last_mean, r.last_std), _opt(r.teacher_top1, ".2f"), _count(r.extra_parameters),
            _opt(r.seconds_per_epoch, ".1f"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def repeat_notes(rows: Sequence[GroupRow]) -> list[str]:
    """One line per group holding repeats: the seed and the folders of its runs."""
    notes = []
    for r in rows:
        for seed, paths in sorted(r.repeats.items()):
            where = f"{r.dataset} {r.teacher + '→' if r.teacher else ''}{r.student} {r.display or r.label}"
            notes.append(f"{where}: seed {seed} has {len(paths)} runs (counted once, their mean): "
                         + ", ".join(map(str, paths)))  # fmt: skip
    return notes


CSV_COLUMNS = [
    "dataset", "teacher", "student", "method", "label", "config", "variant", "n", "seeds",
    "best_top1_mean", "best_top1_std", "last_top1_mean", "last_top1_std", "teacher_top1",
    "parameters", "extra_parameters", "seconds_per_epoch", "runs", "epochs", "repeated_seeds",
]  # fmt: skip


def to_csv(rows: Sequence[GroupRow]) -> str:
    """The groups as CSV (full precision; empty cells for missing values): :data:`CSV_COLUMNS`, then one
    column per varied setting (its dotted key)."""
    from letkd.report.summary import varied_keys

    keys = varied_keys(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + keys)
    for r in rows:
        values = [
            r.dataset, r.teacher, r.student, r.method, r.display or r.label, r.config, r.variant, r.n,
            ";".join(map(str, r.seeds)), r.best_mean, r.best_std, r.last_mean, r.last_std, r.teacher_top1,
            r.parameters, r.extra_parameters, r.seconds_per_epoch, ";".join(map(str, r.runs)), r.epochs,
            ";".join(f"{s}x{len(p)}" for s, p in sorted(r.repeats.items())),
            *(r.settings.get(k) for k in keys),
        ]  # fmt: skip
        writer.writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def plot_accuracy(rows: Sequence[GroupRow]) -> bytes:
    """PNG of test top-1 per epoch (mean over seeds), one panel per dataset, one line per group."""
    buf = io.BytesIO()
    accuracy_figure(rows).savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def accuracy_figure(rows: Sequence[GroupRow]):
    """The matplotlib ``Figure`` of :func:`plot_accuracy`. Every group's points carry markers (at most
    about 20 per line), so a group with a single evaluated epoch shows as a dot."""
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
            ax.plot(
                [e + 1 for e in epochs], accs, marker="o", markersize=4,
                markevery=max(1, len(epochs) // 20), label=f"{pair} {r.display or r.label} (n={r.n})",
            )  # fmt: skip
        ax.set_title(dataset)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def write_outputs(rows: Sequence[GroupRow], out_dir: str | Path, skipped: Sequence[SkippedRun] = ()) -> dict:
    """Write ``report.md`` (table, notes, skipped runs), ``report.csv`` and ``accuracy.png`` to ``out_dir``;
    returns ``{"markdown": Path, "csv": Path, "plot": Path}``."""
    out = Path(out_dir)
    text = ["# Results", "", to_markdown(rows)]
    text.append(
        "Top-1 test accuracy in %: *best* = highest over the epochs, *last* = final epoch; mean ± sample "
        "standard deviation over the n distinct seeds of each group (runs repeating a seed count once, as "
        "their mean). *epochs*: epochs trained (x/y: a run trained x of its y epochs). *extra params*: "
        "parameters the method adds to the student (e.g. KD layers); *s/epoch*: wall-clock seconds per epoch."
    )
    notes = repeat_notes(rows)
    if notes:
        text += ["", "## Repeated seeds", ""] + [f"- {n}" for n in notes]
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
