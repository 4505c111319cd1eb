"""The layouts of the paper's ablations: ``rows`` (Tables 5 and 6), ``probe`` (Table 4) and ``curve``
(Fig. 1), each beside the published numbers.

A run belongs to a row when its config says what the row's ``match`` asks (:func:`run_facets`: the method,
its label, the α and K of its KD layers, whether a KD layer's loss counts) — so the runs may come from any
sweep, grid or hand-made config, and a user's own pair gets the same table (with a note that the paper's
numbers are for another pair). Runs are grouped by setting (dataset, teacher, student); each setting gets
its own table, the paper's setting first.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from letkd.probe import PROBE_FILE
from letkd.report.paper import PaperCell, _fill, _pm, _signed, csv_text
from letkd.report.paper_data import PaperEntry, Row
from letkd.report.read import RunRecord, method_label

Setting = tuple[str, str, str]  # (dataset, teacher or "", student)


def _layers(method: str, params: Any) -> list[tuple[Any, float]]:
    """The KD layers of a letkd method or of the letkd parts of a composition: ``(layer, loss weight)``."""
    if method == "letkd":
        return [(layer, 1.0) for layer in params.layers]
    from letkd.methods import get_method

    found = []
    for part in getattr(params, "parts", None) or []:
        if part.method == "letkd":
            parsed = get_method("letkd").parse_params(part.params)
            found += [(layer, part.weight) for layer in parsed.layers]
    return found


def run_facets(config: dict[str, Any]) -> dict[str, Any]:
    """What a run's config says, as the layouts match it: ``method``, ``label``, ``inter_alpha`` /
    ``pen_alpha`` (α of the sub-class / codebook KD layer; None without one), ``inter_k`` (sub-classes per
    class), ``kd_layer_loss`` (a KD layer whose loss counts; None without KD layers)."""
    section = config.get("method") if isinstance(config.get("method"), dict) else {}
    method, raw = str(section.get("name", "vanilla")), section.get("params") or {}
    facets: dict[str, Any] = {"method": method, "label": method_label(method, raw)}
    try:
        from letkd.methods import get_method

        layers = _layers(method, get_method(method).parse_params(raw))
    except (KeyError, ValueError):  # a method or params this install does not know: no layer facets
        layers = []
    inter = next((layer for layer, _ in layers if layer.kind == "subclass"), None)
    pen = next((layer for layer, _ in layers if layer.kind == "codebook"), None)
    facets["inter_alpha"] = float(inter.alpha) if inter is not None else None
    facets["pen_alpha"] = float(pen.alpha) if pen is not None else None
    facets["inter_k"] = int(inter.subclasses_per_class) if inter is not None else None
    facets["kd_layer_loss"] = any(layer.weight * w > 0 for layer, w in layers) if layers else None
    return facets


def matches(facets: dict[str, Any], match: dict[str, Any]) -> bool:
    """Whether every key of ``match`` has that value in ``facets`` (numbers compared as numbers)."""
    return all(facets.get(key) == value for key, value in match.items())


@dataclass
class LayoutRow:
    """One line: our best- and last-epoch mean ± std (or the probe accuracy as ``best``) and the paper's."""

    label: str
    x: float | None = None  # curve layout: the setting varied
    best: PaperCell = field(default_factory=PaperCell)
    last: PaperCell = field(default_factory=PaperCell)
    missing: int = 0  # matching runs without the value (probe layout: no probe.json yet)


@dataclass
class LayoutTable:
    """One entry's table for one setting."""

    entry: PaperEntry
    setting: Setting
    rows: list[LayoutRow]

    @property
    def is_papers(self) -> bool:
        """Whether the runs are those of the paper's own setting."""
        e = self.entry
        return self.setting[0] == e.dataset and (e.pair is None or tuple(self.setting[1:]) == tuple(e.pair))


def _config(record: RunRecord) -> dict[str, Any]:
    try:
        data = yaml.safe_load((record.path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _probe_value(record: RunRecord, features: str | None) -> float | None:
    try:
        data = json.loads((record.path / PROBE_FILE).read_text())
        return float(data["features"][features or "output"]["test_top1"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _row_specs(entry: PaperEntry, xs: Sequence[float]) -> list[Row]:
    if entry.layout != "curve":
        return list(entry.rows)
    paper = dict(entry.points)
    values = sorted(set(paper) | set(xs))
    return [
        Row(f"{entry.x_label or entry.x} = {x:g}", {**entry.match, entry.x: x}, paper.get(x)) for x in values
    ]


def layout_tables(entry: PaperEntry, records: Sequence[RunRecord]) -> list[LayoutTable]:
    """The entry's tables (layouts ``rows``, ``probe``, ``curve``) over ``records``, one per setting."""
    facets = {r.path: run_facets(_config(r)) for r in records}
    base = entry.match if entry.layout == "curve" else None
    xs = [f[entry.x] for f in facets.values() if entry.x and base is not None and matches(f, base)]
    specs = _row_specs(entry, [x for x in xs if x is not None])
    matched = [(spec, r) for spec in specs for r in records if matches(facets[r.path], spec.match)]
    settings = list(dict.fromkeys((r.dataset, r.teacher or "", r.student) for _, r in matched))
    papers = (entry.dataset, *(entry.pair or ("", "")))
    if not settings:
        settings = [papers]  # type: ignore[list-item]
    settings.sort(key=lambda s: s != papers)
    tables = []
    for setting in settings:
        rows = []
        for spec in specs:
            mine = [r for s, r in matched if s is spec and (r.dataset, r.teacher or "", r.student) == setting]
            row = LayoutRow(spec.label, spec.match.get(entry.x) if entry.layout == "curve" else None)
            if entry.layout == "probe":
                values = [(r.seed, v) for r in mine if (v := _probe_value(r, spec.features)) is not None]
                row.missing = len(mine) - len(values)
            else:
                values = [(r.seed, r.best_top1) for r in mine]
                if values:
                    _fill(row.last, [(r.seed, r.last_top1) for r in mine], "")
            if values:
                _fill(row.best, values, "")
            row.best.paper = spec.paper
            rows.append(row)
        tables.append(LayoutTable(entry, setting, rows))  # type: ignore[arg-type]
    return tables


def _setting_text(setting: Sequence[str]) -> str:
    dataset, teacher, student = setting
    return f"{dataset}, {teacher}→{student}" if teacher else f"{dataset}, {student}"


def layout_markdown(tables: Sequence[LayoutTable]) -> str:
    """Every table as Markdown: per row ours (mean ± std, n), the paper's number and the difference."""
    parts = []
    for t in tables:
        e = t.entry
        paper_setting = _setting_text((e.dataset, *(e.pair or ("", ""))))
        head = f"### {e.title} — {_setting_text(t.setting)}"
        lines = [head, ""]
        if not t.is_papers:
            lines += [f"Our runs: {_setting_text(t.setting)}; the paper's numbers: {paper_setting}.", ""]
        if e.layout == "probe":
            lines += ["| row | LDA test top-1 | n | paper | Δ |", "|---|---:|---:|---:|---:|"]
        else:
            lines += ["| row | best | last | n | paper | Δ (best) |", "|---|---:|---:|---:|---:|---:|"]
        for row in t.rows:
            b = row.best
            ours = (
                [_pm(b.mean, b.std)]
                if e.layout == "probe"
                else [_pm(b.mean, b.std), _pm(row.last.mean, row.last.std)]
            )
            cells = [row.label, *ours, str(b.n), _pm(b.paper, None), _signed(b.diff)]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        missing = sum(r.missing for r in t.rows)
        if missing:
            dirs = " ".join(e.report_dirs) or "RUN_DIR"
            lines += [
                "",
                f"{missing} matching run(s) have no {PROBE_FILE} yet: `letkd probe {dirs}` writes it.",
            ]
        if not any(r.best.n for r in t.rows):
            lines += [
                "",
                f"No run matches a row of this table yet: `letkd paper {e.id}` prints the commands.",
            ]
        parts.append("\n".join(lines) + "\n")
    if tables and tables[0].entry.layout == "probe":
        parts.append(
            "Test accuracy in % of a linear discriminant fitted on the global-average-pooled features of the "
            "training images (`letkd probe`, best checkpoint): mean ± sample standard deviation over n runs; "
            "Δ = ours − paper.\n"
        )
    else:
        parts.append(
            "Test accuracy in %: mean ± sample standard deviation over n runs; *best* = highest over the "
            "epochs (what the paper reports), *last* = final epoch; Δ = ours (best) − paper.\n"
        )
    return "\n".join(parts)


LAYOUT_CSV_COLUMNS = ["table", "setting", "row", "n", "seeds", "best_mean", "best_std", "last_mean",
                      "last_std", "paper", "diff"]  # fmt: skip


def layout_csv(tables: Sequence[LayoutTable]) -> str:
    """Every row of every table as one CSV line, at full precision."""
    return csv_text(LAYOUT_CSV_COLUMNS, (
        [t.entry.id, _setting_text(t.setting), row.label, row.best.n, ";".join(map(str, row.best.seeds)),
         row.best.mean, row.best.std, row.last.mean, row.last.std, row.best.paper, row.best.diff]
        for t in tables for row in t.rows
    ))  # fmt: skip


def plot_curve(tables: Sequence[LayoutTable]) -> bytes:
    """PNG of a curve layout: our best-epoch mean ± std per x (a line per setting) and the paper's points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    entry = tables[0].entry
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for t in tables:
        pts = [(r.x, r.best) for r in t.rows if r.best.n and r.x is not None]
        if pts:
            ax.errorbar([x for x, _ in pts], [c.mean for _, c in pts], yerr=[c.std or 0.0 for _, c in pts],
                        marker="o", capsize=3, label=f"ours ({_setting_text(t.setting)})")  # fmt: skip
    ax.plot([x for x, _ in entry.points], [y for _, y in entry.points], "ks--", label=f"paper ({entry.name})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(entry.x_label or str(entry.x))
    ax.set_ylabel("test top-1 (%), best epoch")
    ax.set_title(entry.title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def write_layout_tables(tables: Sequence[LayoutTable], out_dir: str | Path) -> dict[str, Path]:
    """Write ``<id>.md`` and ``<id>.csv`` (and ``<id>.png`` for a curve) to ``out_dir``; return the paths."""
    from letkd.utils import atomic_write_bytes, atomic_write_text

    entry, out = tables[0].entry, Path(out_dir)
    written = {
        f"{entry.id}_markdown": atomic_write_text(out / f"{entry.id}.md", layout_markdown(tables)),
        f"{entry.id}_csv": atomic_write_text(out / f"{entry.id}.csv", layout_csv(tables)),
    }
    if entry.layout == "curve":
        written[f"{entry.id}_plot"] = atomic_write_bytes(out / f"{entry.id}.png", plot_curve(tables))
    return written
