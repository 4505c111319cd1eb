"""The paper's table layout: methods as rows, teacher→student pairs as columns, our mean ± std over seeds
beside the published number and the difference.

The published numbers (Tables 1–3 of the letKD paper) live in ``paper_results.yaml`` next to this module
(:mod:`letkd.report.paper_data`), with the mapping from our model names to the paper's abbreviations
(``resnet56`` → ``RN56``) and from our method labels to the paper's rows (``letkd2`` → ``letKD-2``). Runs
that match no published cell still get a row or column of their own (paper value "—"), and so do runs under
another training recipe than the one the published row was obtained with
(:func:`letkd.recipes.published_recipe`): ``KD [letkd recipe]``. Rows follow the paper: Teacher, Student,
then the methods in the order the paper lists them; rows it does not have come last.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from letkd.recipes import published_recipe
from letkd.report.paper_data import PaperEntry, PaperResults, PublishedTable, load_paper_results
from letkd.report.read import RunRecord
from letkd.report.summary import GroupRow, summarize
from letkd.utils import atomic_write_text

EPOCHS = ("best", "last")
TEACHER_ROW = "Teacher"


@dataclass
class PaperCell:
    """One cell of a comparison table: our runs' mean ± sample std (n runs) and the published value."""

    n: int = 0
    seeds: list[int] = field(default_factory=list)
    mean: float | None = None
    std: float | None = None  # sample std (n − 1); None for fewer than two runs
    paper: float | None = None
    paper_std: float | None = None
    configs: list[str] = field(default_factory=list)

    @property
    def diff(self) -> float | None:
        """Ours minus the paper (None when either is missing)."""
        return None if self.mean is None or self.paper is None else self.mean - self.paper


@dataclass
class PaperTable:
    """Methods × pairs for one dataset, metric (top1/top5) and epoch (best/last)."""

    title: str
    dataset: str
    metric: str
    epoch: str
    trials: int | None  # runs per number in the paper (None: no published table)
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], PaperCell]

    def cell(self, row: str, column: str) -> PaperCell:
        """The cell at (row, column); an empty one where neither we nor the paper have a number."""
        return self.cells.get((row, column), PaperCell())


def _value(record: RunRecord, metric: str, epoch: str) -> float | None:
    if metric == "top5":
        return record.best_top5 if epoch == "best" else record.last_top5
    return record.best_top1 if epoch == "best" else record.last_top1


def _columns_of(group: GroupRow, known: list[str], models: dict[str, str]) -> list[str]:
    """The pair columns a group belongs to. A run without a teacher (the student trained alone) fills every
    known column with its student, narrowed to the pair its config name spells (``resnet56_resnet20``)."""
    student = models.get(group.student, group.student)
    if group.teacher:
        return [f"{models.get(group.teacher, group.teacher)}→{student}"]
    same_student = [c for c in known if c.endswith(f"→{student}")]

    def spelled(column: str) -> bool:
        abbr = column.split("→")[0]
        teachers = [ours for ours, short in models.items() if short == abbr] + [abbr]
        return any(f"{t}_{group.student}" in group.config for t in teachers)

    named = [c for c in same_student if spelled(c)]
    return named or same_student or [student]


def _spells_another_pair(group: GroupRow, models: dict[str, str]) -> bool:
    """Whether a run of the student alone has a config name that spells a teacher→student pair whose student
    is another model (``cifar100-resnet56_resnet20-vanilla`` for a resnet8 run)."""
    if group.teacher:
        return False
    return any(
        re.search(rf"(?<![A-Za-z0-9]){re.escape(t)}_{re.escape(s)}(?![A-Za-z0-9])", group.config)
        for t in models
        for s in models
        if s != group.student and t in group.config
    )


def _fill(cell: PaperCell, values: Sequence[tuple[int, float]], config: str) -> None:
    cell.n, cell.seeds = len(values), [s for s, _ in values]
    numbers = [v for _, v in values]
    cell.mean = statistics.fmean(numbers)
    cell.std = statistics.stdev(numbers) if len(numbers) > 1 else None
    cell.configs.append(config)


def _build(
    dataset: str, metric: str, epoch: str, published: PublishedTable | None, groups: list[GroupRow],
    by_path: dict[Path, RunRecord], results: PaperResults,
) -> PaperTable:  # fmt: skip
    columns = list(published.columns) if published else []
    rows = list(published.rows) if published else []
    if TEACHER_ROW not in rows:
        rows.insert(0, TEACHER_ROW)
    cells: dict[tuple[str, str], PaperCell] = {}
    used: set[str] = set()
    teacher_values: dict[str, list[tuple[int, float]]] = {}
    # runs with a teacher first: they name the pairs that runs of the student alone are matched to; of the
    # latter, those whose config name spells a pair of another student come last (they never take a cell)
    for group in sorted(groups, key=lambda g: (g.teacher is None, _spells_another_pair(g, results.models))):
        records = [by_path[p] for p in group.runs]
        values = [(r.seed, v) for r in records if (v := _value(r, metric, epoch)) is not None]
        if not values:
            continue
        row = results.methods.get(group.label, group.label)
        if group.recipe and group.recipe != published_recipe(group.label, dataset):
            row = f"{row} [{group.recipe} recipe]"  # not the recipe of the published row: a row of its own
        if group.unfinished:  # --include-unfinished: never in the cell of finished runs
            row = f"{row} (unfinished: epochs {group.epochs})"
        for column in _columns_of(group, columns, results.models):
            if column not in columns:
                columns.append(column)
            key = (row, column)
            if key in cells and cells[key].n:
                extra = (group.display or "").removeprefix(group.label).strip() or f"({group.config})"
                key = (f"{row} {extra}", column)
            if key[0] not in rows:
                rows.append(key[0])
            _fill(cells.setdefault(key, PaperCell()), values, group.config)
            used.add(column)
            if group.teacher and metric == "top1":
                teacher_values.setdefault(column, []).extend(
                    (r.seed, r.teacher_top1) for r in records if r.teacher_top1 is not None
                )
    for column, values in teacher_values.items():
        if values:
            _fill(cells.setdefault((TEACHER_ROW, column), PaperCell()), values, "teacher_top1")
    shown = [c for c in columns if c in used]
    for row in rows:
        for column in shown:
            paper, paper_std = published.value(row, column) if published else (None, None)
            if paper is not None:
                cell = cells.setdefault((row, column), PaperCell())
                cell.paper, cell.paper_std = paper, paper_std
    title = f"{published.name} — {dataset}" if published else dataset
    metric_name = "top-1" if metric == "top1" else "top-5"
    return PaperTable(
        title=f"{title} {metric_name}, {epoch} epoch", dataset=dataset, metric=metric, epoch=epoch,
        trials=published.trials if published else None, rows=_paper_order(rows, published, results),
        columns=shown, cells=cells,
    )  # fmt: skip


def _paper_order(rows: list[str], published: PublishedTable | None, results: PaperResults) -> list[str]:
    """Teacher, the published rows in the paper's order, then the other rows in the order of the paper's
    method list (Student, KD, FitNet, ..., letKD-1, letKD-2), rows the paper does not know last."""
    order = [TEACHER_ROW, *(published.rows if published else []), *results.methods.values()]
    rank = {row: i for i, row in reversed(list(enumerate(order)))}
    return sorted(rows, key=lambda row: (rank.get(row.split(" (")[0], len(order)), rows.index(row)))


def paper_tables(
    records: Sequence[RunRecord],
    epochs: Sequence[str] = EPOCHS,
    results: PaperResults | None = None,
    entry: PaperEntry | None = None,
) -> list[PaperTable]:
    """One :class:`PaperTable` per dataset of ``records`` × published metric × epoch (best/last).

    With ``entry`` (a pairs-layout table of the paper) only its published numbers are used: runs of another
    dataset get tables in the same row order without published numbers.
    """
    results = results or load_paper_results()
    groups = summarize(records)
    by_path = {r.path: r for r in records}
    tables = entry.published if entry is not None else results.tables
    out = []
    for dataset in sorted({g.dataset for g in groups}):
        mine = [g for g in groups if g.dataset == dataset]
        published = [t for t in tables if t.dataset == dataset] or [None]
        for table in published:
            for epoch in epochs:
                metric = table.metric if table else "top1"
                built = _build(dataset, metric, epoch, table, mine, by_path, results)
                if entry is not None and table is None:
                    built.title = f"{entry.name} layout — {built.title} (the paper's: {entry.dataset})"
                if built.columns:
                    out.append(built)
    return out


def _pm(mean: float | None, std: float | None, n: int | None = None) -> str:
    if mean is None:
        return "—"
    text = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    return text if n is None else f"{text} (n={n})"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def table_markdown(table: PaperTable) -> str:
    """One table as Markdown: per pair, our value (mean ± std, n), the paper's and ours − paper."""
    head = ["method"]
    for column in table.columns:
        head += [column, "paper", "Δ"]
    lines = [
        f"### {table.title}",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for row in table.rows:
        cells = [table.cell(row, c) for c in table.columns]
        if not any(c.n or c.paper is not None for c in cells):
            continue
        text = [row]
        for c in cells:
            text += [_pm(c.mean, c.std, c.n or None), _pm(c.paper, c.paper_std), _signed(c.diff)]
        lines.append("| " + " | ".join(t.replace("|", "\\|") for t in text) + " |")
    return "\n".join(lines) + "\n"


def tables_markdown(tables: Sequence[PaperTable]) -> str:
    """Every table, with a note on what the numbers are."""
    parts = [table_markdown(t) for t in tables]
    parts.append(
        "Test accuracy in %: ours = mean ± sample standard deviation over n runs (seeds), *best* = highest "
        "over the epochs, *last* = final epoch; *paper* = the published number (mean over its trials; "
        "the paper reports best-epoch accuracy); Δ = ours − paper. Teacher row: the teacher's accuracy "
        "measured by each run.\n"
    )
    return "\n".join(parts)


PAIRS_CSV_COLUMNS = [
    "table", "dataset", "metric", "epoch", "method", "pair", "n", "seeds", "mean", "std",
    "paper", "paper_std", "diff", "configs",
]  # fmt: skip


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A CSV with a header line; ``None`` becomes an empty field, numbers keep full precision."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buf.getvalue()


def tables_csv(tables: Sequence[PaperTable]) -> str:
    """Every cell with a number (ours or the paper's) as one CSV line, at full precision."""
    cells = [(t, row, column, t.cell(row, column)) for t in tables for row in t.rows for column in t.columns]
    return csv_text(PAIRS_CSV_COLUMNS, (
        [t.title, t.dataset, t.metric, t.epoch, row, column, c.n, ";".join(map(str, c.seeds)),
         c.mean, c.std, c.paper, c.paper_std, c.diff, ";".join(c.configs)]
        for t, row, column, c in cells if c.n or c.paper is not None
    ))  # fmt: skip


def write_paper_tables(
    tables: Sequence[PaperTable], out_dir: str | Path, stem: str = "pairs"
) -> dict[str, Path]:
    """Write ``<stem>.md`` and ``<stem>.csv`` (default ``pairs.md``, ``pairs.csv``) to ``out_dir``; returns
    their paths."""
    out = Path(out_dir)
    return {
        f"{stem}_markdown": atomic_write_text(
            out / f"{stem}.md", "# Results by pair\n\n" + tables_markdown(tables)
        ),
        f"{stem}_csv": atomic_write_text(out / f"{stem}.csv", tables_csv(tables)),
    }
