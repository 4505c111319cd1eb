"""``letkd report --layout``: the group table (``groups``), the paper's pair tables (``pairs``) or one table
or figure of the paper by its id (``table1`` … ``table6``, ``fig1``), printed and written to the output
folder beside ``report.md``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from letkd.report.ablation import layout_markdown, layout_tables, write_layout_tables
from letkd.report.paper import paper_tables, tables_markdown, write_paper_tables
from letkd.report.paper_data import load_paper_results
from letkd.report.read import RunRecord


def layout_names() -> list[str]:
    """Every ``--layout`` value: ``groups``, ``pairs`` and the id of each table and figure of the paper."""
    return ["groups", "pairs", *(e.id for e in load_paper_results().entries)]


def write_layout(
    layout: str, records: Sequence[RunRecord], out_dir: str | Path
) -> tuple[str, dict[str, Path]]:
    """Lay ``records`` out as ``layout`` (not ``groups``): the Markdown text to print and the files written
    to ``out_dir`` (``pairs.md``/``.csv``, or ``<id>.md``/``.csv`` and for a figure ``<id>.png``)."""
    if layout == "pairs":
        tables = paper_tables(records)
        return tables_markdown(tables), write_paper_tables(tables, out_dir)
    entry = load_paper_results().entry(layout)
    if entry.layout == "pairs":
        tables = paper_tables(records, entry=entry)
        return tables_markdown(tables), write_paper_tables(tables, out_dir, stem=entry.id)
    layout_rows = layout_tables(entry, records)
    return layout_markdown(layout_rows), write_layout_tables(layout_rows, out_dir)
