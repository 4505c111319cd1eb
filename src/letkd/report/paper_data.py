"""The paper's tables and figures as data: ``paper_results.yaml`` (next to this module) read into one
:class:`PaperEntry` per table or figure — what it measures, the sweeps that reproduce it, its layout and the
published numbers — plus the names of our models and methods in the paper and the inputs of the cost
estimate. ``letkd paper`` (:mod:`letkd.report.plan`) and ``letkd report --layout``
(:mod:`letkd.report.layouts`) both read it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

LAYOUTS = ("pairs", "rows", "probe", "curve")


@dataclass(frozen=True)
class PublishedTable:
    """One published table: ``rows[method][i]`` is the number of ``columns[i]`` (None = not reported)."""

    name: str
    dataset: str
    metric: str  # "top1" or "top5"
    trials: int
    columns: list[str]
    rows: dict[str, list[float | None]]
    std: dict[str, list[float | None]]

    def value(self, row: str, column: str) -> tuple[float | None, float | None]:
        """(published mean, published std) of a cell; (None, None) where the paper has no number."""
        if row not in self.rows or column not in self.columns:
            return None, None
        i = self.columns.index(column)
        stds = self.std.get(row)
        return self.rows[row][i], (stds[i] if stds else None)


@dataclass(frozen=True)
class Sweep:
    """One ``letkd sweep`` call: configs (paths or globs, relative to the repository root), grid, seeds."""

    configs: list[str]
    seeds: int
    out: str
    grid: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def grid_points(self) -> int:
        """Number of grid combinations (1 without a grid)."""
        n = 1
        for values in self.grid.values():
            n *= len(values)
        return n

    def command(self) -> str:
        """The exact command line."""
        grid = [f"--grid {key}={','.join(map(str, values))}" for key, values in self.grid.items()]
        return " ".join(
            ["letkd sweep", *self.configs, *grid, f"--seeds {self.seeds}", f"--out {shlex.quote(self.out)}"]
        )


@dataclass(frozen=True)
class Row:
    """One line of a ``rows`` / ``probe`` layout: the runs whose configs match, and the paper's number."""

    label: str
    match: dict[str, Any]
    paper: float | None
    features: str | None = None  # probe layout: which feature set (input / output / tap)


@dataclass(frozen=True)
class PaperEntry:
    """One table or figure of the paper (see ``paper_results.yaml``)."""

    id: str
    title: str
    measures: str
    layout: str
    dataset: str
    trials: int
    sweeps: list[Sweep]
    then: list[str] = field(default_factory=list)
    notes: str = ""
    pair: tuple[str, str] | None = None  # (teacher, student) of the ablations
    published: list[PublishedTable] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    x: str | None = None  # curve layout: the varied setting, its axis label, the runs' filter, the points
    x_label: str = ""
    match: dict[str, Any] = field(default_factory=dict)
    points: list[tuple[float, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``Table 5`` / ``Fig. 1``: the title up to its dash."""
        return self.title.split(" — ")[0]

    @property
    def report_dirs(self) -> list[str]:
        """The sweep folders the report reads, in order."""
        return list(dict.fromkeys(s.out for s in self.sweeps))

    def commands(self) -> list[str]:
        """Every command, in order: the sweeps, what follows them, the report."""
        report = f"letkd report {' '.join(map(shlex.quote, self.report_dirs))} --layout {self.id}"
        return [*(s.command() for s in self.sweeps), *self.then, report]


@dataclass(frozen=True)
class CostModel:
    """Inputs of the GPU-hour estimate (see the ``cost`` section of ``paper_results.yaml``)."""

    step_ratio: dict[str, float]
    teacher_forward: float
    epoch_seconds: dict[str, float]


@dataclass(frozen=True)
class PaperResults:
    """The contents of ``paper_results.yaml``: name maps, the entries, their published pair tables."""

    models: dict[str, str]
    methods: dict[str, str]
    entries: list[PaperEntry]
    cost: CostModel

    @property
    def tables(self) -> list[PublishedTable]:
        """Every published table of the pairs layout (Tables 1–3; Table 2 twice: top-1 and top-5)."""
        return [t for e in self.entries for t in e.published]

    def entry(self, entry_id: str) -> PaperEntry:
        """The entry ``entry_id`` (``table5``, ``fig1``); ``KeyError`` listing the known ones."""
        for e in self.entries:
            if e.id == entry_id:
                return e
        raise KeyError(
            f"unknown table or figure {entry_id!r}; known: {', '.join(e.id for e in self.entries)}"
        )


def _entry(data: dict[str, Any]) -> PaperEntry:
    if data["layout"] not in LAYOUTS:
        raise ValueError(f"paper entry {data['id']}: unknown layout {data['layout']!r}")
    name = str(data["title"]).split(" — ")[0]
    published = [
        PublishedTable(
            name=name, dataset=data["dataset"], metric=t["metric"], trials=int(data["trials"]),
            columns=list(t["columns"]), rows=dict(t["rows"]), std=dict(t.get("std") or {}),
        )
        for t in data.get("published") or []
    ]  # fmt: skip
    return PaperEntry(
        id=data["id"], title=data["title"], measures=" ".join(str(data["measures"]).split()),
        layout=data["layout"], dataset=data["dataset"], trials=int(data["trials"]),
        sweeps=[Sweep(list(s["configs"]), int(s["seeds"]), s["out"], dict(s.get("grid") or {}))
                for s in data["sweeps"]],
        then=list(data.get("then") or []), notes=" ".join(str(data.get("notes") or "").split()),
        pair=tuple(data["pair"]) if data.get("pair") else None,  # type: ignore[arg-type]
        published=published,
        rows=[Row(r["label"], dict(r.get("match") or {}), r.get("paper"), r.get("features"))
              for r in data.get("rows") or []],
        x=data.get("x"), x_label=data.get("x_label", ""), match=dict(data.get("match") or {}),
        points=[(float(x), float(y)) for x, y in data.get("points") or []],
    )  # fmt: skip


@cache
def load_paper_results(path: str | None = None) -> PaperResults:
    """Read ``paper_results.yaml`` (the packaged file by default)."""
    text = (
        Path(path).read_text()
        if path
        else resources.files("letkd.report").joinpath("paper_results.yaml").read_text()
    )
    data = yaml.safe_load(text)
    cost = data["cost"]
    return PaperResults(
        models=dict(data["models"]),
        methods=dict(data["methods"]),
        entries=[_entry(e) for e in data["paper"]],
        cost=CostModel(
            step_ratio={k: float(v) for k, v in cost["step_ratio"].items()},
            teacher_forward=float(cost["teacher_forward"]),
            epoch_seconds={k: float(v) for k, v in cost["epoch_seconds"].items()},
        ),
    )
