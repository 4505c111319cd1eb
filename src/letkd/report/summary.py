"""Grouping runs that differ only by seed: mean ± sample std of best and last test top-1 per group, over
its distinct seeds.

Runs of one group with the same seed are repeats: each seed counts once (its runs averaged), and the group
names the repeated seeds and their folders. Settings that differ between groups of the same config (a grid
sweep's keys) become columns (:attr:`GroupRow.varied`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from letkd.engine.identity import short_keys
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
    n: int  # distinct seeds
    seeds: list[int]  # the distinct seeds, sorted
    best_mean: float
    best_std: float | None  # sample standard deviation (n − 1) over the seeds; None for a single seed
    last_mean: float
    last_std: float | None
    teacher_top1: float | None
    parameters: int | None
    extra_parameters: int | None
    seconds_per_epoch: float | None
    runs: list[Path]
    curve: list[tuple[int, float]]  # (epoch, mean test top-1 over the runs that evaluated that epoch)
    recipe: str | None = None  # the runs' training recipe (a group never mixes recipes: it is in the config)
    display: str = ""  # method label as shown (unique within its dataset/teacher/student)
    table_label: str = ""  # the same without the values of the varied keys (the table has their columns)
    repeats: dict[int, list[Path]] = field(default_factory=dict)  # seed -> its folders, for repeated seeds
    epochs: str = ""  # epochs trained: "3", or "1/3" (done/planned) when a run is unfinished
    unfinished: bool = False  # a run has trained fewer epochs than its config asks for
    varied: dict[str, str] = field(default_factory=dict)  # varied key (short) -> this group's value
    settings: dict[str, Any] = field(default_factory=dict)  # experiment settings of the group's config


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


def seed_values(
    records: Sequence[RunRecord], value: Callable[[RunRecord], float | None]
) -> list[tuple[int, float]]:
    """``(seed, value)`` once per distinct seed, sorted by seed: the mean over a seed's runs (repeats), runs
    without a value left out."""
    by_seed: dict[int, list[float]] = {}
    for r in records:
        v = value(r)
        if v is not None:
            by_seed.setdefault(r.seed, []).append(v)
    return [(seed, statistics.fmean(vs)) for seed, vs in sorted(by_seed.items())]


def _epochs_cell(records: Sequence[RunRecord]) -> tuple[str, bool]:
    """``"3"`` when every run trained the epochs its config asks for, else ``"1/3"`` or ``"1-2/3"``."""
    planned = _common(r.epochs_planned for r in records)
    done = sorted({r.epochs_done for r in records if r.epochs_done is not None})
    if not done:
        return ("—" if planned is None else str(planned)), False
    span = str(done[0]) if len(done) == 1 else f"{done[0]}-{done[-1]}"
    if planned is None:
        return span, False
    unfinished = done[0] < planned
    return (f"{span}/{planned}" if unfinished else str(planned)), unfinished


def seeds_text(seeds: Sequence[int]) -> str:
    """``0-4`` / ``0,2,5`` / ``0-2,7``: the sorted seeds, three or more consecutive ones as a range."""
    ordered = sorted(set(seeds))
    runs: list[list[int]] = []
    for s in ordered:
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)


def summarize(records: Sequence[RunRecord]) -> list[GroupRow]:
    """One :class:`GroupRow` per group of runs that differ only by seed, sorted by dataset, teacher, student,
    method; mean ± sample std over the group's distinct seeds of the best-epoch and last-epoch test top-1."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.group_key, []).append(r)
    rows = []
    for _key, runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: (r.seed, str(r.path)))
        best = seed_values(runs, lambda r: r.best_top1)
        last = seed_values(runs, lambda r: r.last_top1)
        best_mean, best_std = _mean_std([v for _, v in best])
        last_mean, last_std = _mean_std([v for _, v in last])
        teacher_accs = [r.teacher_top1 for r in runs if r.teacher_top1 is not None]
        seconds = [r.seconds_per_epoch for r in runs if r.seconds_per_epoch is not None]
        by_seed: dict[int, list[Path]] = {}
        for r in runs:
            by_seed.setdefault(r.seed, []).append(r.path)
        epochs, unfinished = _epochs_cell(runs)
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
                n=len(by_seed),
                seeds=sorted(by_seed),
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
                repeats={s: paths for s, paths in by_seed.items() if len(paths) > 1},
                epochs=epochs,
                unfinished=unfinished,
                settings=first.settings,
            )
        )
    keys = _set_varied(rows)
    rows.sort(key=lambda row: _order(row, keys))
    _set_display_labels(rows)
    return rows


def _order(row: GroupRow, keys: Sequence[str]) -> tuple:
    """Rows by dataset, teacher, student, method, config, then the varied settings' values (numbers by value:
    lr 0.05 before 0.2)."""
    values = tuple(
        (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, repr(v))
        for v in (row.settings.get(k) for k in keys)
    )
    return (row.dataset, row.teacher or "", row.student, row.label, row.config, values, row.variant)


def varied_keys(rows: Sequence[GroupRow]) -> list[str]:
    """Dotted keys whose values differ between groups of the same config (e.g. the keys of a grid sweep),
    in the order of the settings."""
    by_config: dict[tuple, list[GroupRow]] = {}
    for row in rows:
        by_config.setdefault((row.dataset, row.teacher, row.student, row.config), []).append(row)
    keys: dict[str, None] = {}
    for same in by_config.values():
        if len(same) < 2:
            continue
        for key in dict.fromkeys(k for row in same for k in row.settings):
            if len({repr(row.settings.get(key, "—")) for row in same}) > 1:
                keys[key] = None
    return list(keys)


def _value_text(value: Any) -> str:
    return "—" if value is None else str(value)


def _set_varied(rows: Sequence[GroupRow]) -> list[str]:
    """Set each row's :attr:`GroupRow.varied`; returns the varied dotted keys."""
    keys = varied_keys(rows)
    for row in rows:
        row.varied = {short: _value_text(row.settings.get(key)) for key, short in zip(keys, short_keys(keys))}
    return keys


def _set_display_labels(rows: list[GroupRow]) -> None:
    """Labels per row: the method label and its recipe (``kd [repdistiller]``), plus the config name where
    labels clash, plus the varied values (or the variant hash, if none tells them apart) where one config
    has several groups. ``table_label`` leaves the varied values out (the table shows them in their
    columns)."""
    by_label: dict[tuple, list[GroupRow]] = {}
    for row in rows:
        by_label.setdefault((row.dataset, row.teacher, row.student, row.label, row.recipe), []).append(row)
    for same in by_label.values():
        for row in same:
            base = f"{row.label} [{row.recipe}]" if row.recipe else row.label
            named = [row.config] if len({r.config for r in same}) > 1 else []
            varied: list[str] = []
            if sum(r.config == row.config for r in same) > 1:
                varied = [f"{k}={v}" for k, v in row.varied.items()
                          if len({r.varied.get(k) for r in same if r.config == row.config}) > 1]  # fmt: skip
                named += [] if varied else [f"#{row.variant}"]
            row.display = f"{base} ({', '.join(named + varied)})" if named + varied else base
            row.table_label = f"{base} ({', '.join(named)})" if named else base
