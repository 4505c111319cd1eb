"""Grouping runs that differ only by seed: mean ± sample std of best and last test top-1 per group."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from letkd.report.read import RunRecord


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
    recipe: str | None = None  # the runs' training recipe (a group never mixes recipes: it is in the config)


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
                recipe=first.recipe,
            )
        )
    _set_display_labels(rows)
    return rows


def _set_display_labels(rows: list[GroupRow]) -> None:
    """Label shown per row: the method label and its recipe (``kd [repdistiller]``), plus the config name
    (and variant) where that is ambiguous."""
    by_label: dict[tuple, list[GroupRow]] = {}
    for row in rows:
        by_label.setdefault((row.dataset, row.teacher, row.student, row.label), []).append(row)
    for same in by_label.values():
        for row in same:
            label = f"{row.label} [{row.recipe}]" if row.recipe else row.label
            row.display = label
            others = [r for r in same if r.recipe == row.recipe]
            if len(others) > 1:
                row.display = f"{label} ({row.config})"
                if sum(r.config == row.config for r in others) > 1:
                    row.display = f"{label} ({row.config} #{row.variant})"
