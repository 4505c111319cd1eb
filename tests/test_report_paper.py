"""``letkd report --layout pairs``: the paper's tables from fabricated run folders, and the published
numbers checked against the tables of docs/SPEC.md §8."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from letkd.cli import main as cli_main
from letkd.report import collect_runs, load_paper_results, paper_tables, tables_markdown
from test_report import LETKD1, LETKD2, make_run

ROOT = Path(__file__).resolve().parents[1]
PAIR = "cifar100-resnet56_resnet20"
CURVES = {
    ("letkd2", 0): [40.0, 73.5, 73.0], ("letkd2", 1): [41.0, 73.1, 72.5], ("letkd2", 2): [42.0, 72.9, 72.75],
    ("letkd1", 0): [40.0, 72.0, 71.5], ("letkd1", 1): [39.0, 72.6, 72.5],
    ("kd", 0): [35.0, 70.75, 70.5], ("kd", 1): [36.0, 70.25, 70.0],
    ("vanilla", 0): [30.0, 69.0, 68.5], ("vanilla", 1): [31.0, 68.0, 67.0],
}  # fmt: skip
TEACHER_TOP1 = {0: 72.0, 1: 72.5, 2: 72.25}
MYMETHOD_TEACHER_TOP1 = 71.5


def _spec_tables() -> dict[str, dict[str, list[str]]]:
    """The Markdown tables of SPEC §8.1–8.3: {section: {first cell: [other cells]}}."""
    text = (ROOT / "docs" / "SPEC.md").read_text()
    out = {}
    for section in ("8.1", "8.2", "8.3"):
        body = text.split(f"### {section} ")[1].split("\n### ")[0]
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines()]
        rows = [r for r in rows if len(r) > 2 and not set(r[0]) <= {"-"}]
        out[section] = {" ".join(r[:2]) if section == "8.2" else r[0]: r[1:] for r in rows}
    return out


def _number(cell: str) -> tuple[float | None, float | None]:
    if cell == "-":
        return None, None
    m = re.fullmatch(r"([\d.]+)(?: ±([\d.]+))?", cell)
    assert m, cell
    return float(m[1]), (float(m[2]) if m[2] else None)


def _cited_rows(name: str, dataset: str) -> dict[str, str]:
    """The ``sources`` of a published table: rows taken from other papers than the letKD paper."""
    data = yaml.safe_load((ROOT / "src" / "letkd" / "report" / "paper_results.yaml").read_text())
    (entry,) = [e for e in data["paper"] if e.get("dataset") == dataset and e.get("layout") == "pairs"]
    (table,) = [t for t in entry["published"] if t["metric"] == "top1"]
    return table.get("sources") or {}


def test_published_numbers_are_those_of_the_spec():
    spec, results = _spec_tables(), load_paper_results()
    by_name = {(t.dataset, t.metric): t for t in results.tables}
    for section, dataset in (("8.1", "cifar100"), ("8.3", "tiny_imagenet")):
        table, rows = by_name[(dataset, "top1")], spec[section]
        header = rows.pop("Method")
        assert table.columns == header
        cited = _cited_rows(table.name, dataset)  # rows from other papers, each with its source
        assert [r for r in table.rows if r not in cited] == list(rows) and set(cited) <= set(table.rows)
        for method, cells in rows.items():
            for column, cell in zip(header, cells):
                assert table.value(method, column) == _number(cell), (dataset, method, column)
    rows = spec["8.2"]
    for metric, label in (("top1", "Top-1"), ("top5", "Top-5")):
        table = by_name[("imagenet", metric)]
        header = rows["Setting metric"]
        lines = [cells for key, cells in rows.items() if key.endswith(label)]
        assert len(lines) == 2 and table.columns == ["RN34→RN18", "RN50→MNV2"]
        for method_index, method in enumerate(header[1:], 1):
            expected = [float(line[method_index]) for line in lines]
            assert [table.value(method, c)[0] for c in table.columns] == expected


@pytest.fixture()
def runs(tmp_path):
    base = tmp_path / "runs"
    for (kind, seed), curve in CURVES.items():
        if kind == "vanilla":  # the student alone: no teacher; its config name spells the pair
            make_run(base, f"{PAIR}-vanilla", seed, curve, method="vanilla", params={}, teacher=None,
                     teacher_top1=None)  # fmt: skip
        elif kind == "kd":
            make_run(base, f"{PAIR}-kd", seed, curve, method="kd", params={},
                     teacher_top1=TEACHER_TOP1[seed])  # fmt: skip
        else:
            params = LETKD2 if kind == "letkd2" else LETKD1
            make_run(base, f"{PAIR}-{kind}", seed, curve, params=params, teacher_top1=TEACHER_TOP1[seed])
    # a pair and a method the paper does not have
    make_run(base, "cifar100-resnet110_resnet8x4-kd", 0, [50.0, 60.0], method="kd", params={},
             teacher="resnet110", student="resnet8x4", teacher_top1=74.0)  # fmt: skip
    make_run(base, f"{PAIR}-mymethod", 0, [50.0, 61.0], method="mymethod", params={},
             teacher_top1=MYMETHOD_TEACHER_TOP1)  # fmt: skip
    return base


def _stats(values):
    arr = np.array(values)
    return arr.mean(), (arr.std(ddof=1) if len(arr) > 1 else None)


def test_cells_hold_mean_std_over_seeds_beside_the_paper(runs):
    tables = paper_tables(collect_runs([runs]))
    assert [(t.dataset, t.metric, t.epoch) for t in tables] == [
        ("cifar100", "top1", "best"),
        ("cifar100", "top1", "last"),
    ]
    for table in tables:
        pick = max if table.epoch == "best" else (lambda curve: curve[-1])
        assert table.columns == ["RN56→RN20", "RN110→RN8x4"]  # paper order, then ours
        for kind, row, paper in (("letkd2", "letKD-2", 73.27), ("letkd1", "letKD-1", 72.44),
                                 ("kd", "KD", 70.66), ("vanilla", "Student", 69.06)):  # fmt: skip
            seeds = sorted(s for k, s in CURVES if k == kind)
            mean, std = _stats([pick(CURVES[(kind, s)]) for s in seeds])
            cell = table.cell(row, "RN56→RN20")
            assert cell.n == len(seeds) and cell.seeds == seeds
            assert cell.mean == pytest.approx(mean) and cell.std == pytest.approx(std)
            assert cell.paper == paper and cell.diff == pytest.approx(mean - paper)
        assert table.cell("letKD-2", "RN56→RN20").paper_std == 0.16
        teacher = table.cell("Teacher", "RN56→RN20")
        measured = [TEACHER_TOP1[s] for k, s in CURVES if k != "vanilla"] + [MYMETHOD_TEACHER_TOP1]
        assert teacher.n == len(measured) and teacher.mean == pytest.approx(np.mean(measured))
        assert teacher.paper == 72.34
        # paper rows we did not run keep the published number; unmatched runs have no paper number
        assert table.cell("CRD", "RN56→RN20").paper == 71.16 and table.cell("CRD", "RN56→RN20").n == 0
        other = table.cell("KD", "RN110→RN8x4")
        assert other.n == 1 and other.paper is None and other.diff is None
        assert "mymethod" in table.rows and table.cell("mymethod", "RN56→RN20").mean == 61.0
        assert table.cell("mymethod", "RN56→RN20").paper is None
        # the student alone fills only the pair its config name spells
        assert table.cell("Student", "RN110→RN8x4").n == 0


def test_markdown_shows_ours_paper_and_difference(runs):
    text = tables_markdown(paper_tables(collect_runs([runs])))
    best = [max(CURVES[("letkd2", s)]) for s in range(3)]
    mean, std = _stats(best)
    line = next(l for l in text.splitlines() if l.startswith("| letKD-2 |"))
    assert f"| {mean:.2f} ± {std:.2f} (n=3) | 73.27 ± 0.16 | {mean - 73.27:+.2f} |" in line
    assert "| FSP | — | 69.95 | — |" in text  # a paper-only row, in a table without our run
    assert "### Table 1 — cifar100 top-1, best epoch" in text and "last epoch" in text


def test_top5_table_uses_the_best_epochs_top5(tmp_path):
    curves = {0: [60.0, 70.0, 69.0], 1: [61.0, 71.0, 70.5]}
    for seed, curve in curves.items():
        make_run(
            tmp_path, "imagenet-resnet34_resnet18-kd", seed, curve, method="kd", params={},
            teacher="torchvision:resnet34", student="torchvision:resnet18", dataset="imagenet",
        )  # fmt: skip
    tables = {(t.metric, t.epoch): t for t in paper_tables(collect_runs([tmp_path]))}
    top5 = tables[("top5", "best")].cell("KD", "RN34→RN18")  # make_run writes top-5 = top-1 + 20
    assert top5.mean == pytest.approx(np.mean([max(c) + 20 for c in curves.values()]))
    assert top5.paper == 89.88
    assert tables[("top1", "last")].cell("KD", "RN34→RN18").mean == pytest.approx(69.75)
    assert tables[("top5", "best")].cell("Teacher", "RN34→RN18").n == 0  # no teacher top-5 measured


def test_command_writes_pairs_markdown_and_csv(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["report", str(runs), "--out", str(out), "--layout", "pairs"]) == 0
    printed = capsys.readouterr().out
    assert "| method | RN56→RN20 | paper | Δ |" in printed.replace(" | RN110→RN8x4 | paper | Δ |", " |")
    assert (out / "pairs.md").read_text().count("### Table 1") == 2
    assert (out / "report.md").is_file()
    with open(out / "pairs.csv") as fh:
        lines = list(csv.DictReader(fh))
    cell = next(r for r in lines if r["method"] == "letKD-2" and r["epoch"] == "last")
    last = [CURVES[("letkd2", s)][-1] for s in range(3)]
    mean, std = _stats(last)
    assert cell["pair"] == "RN56→RN20" and cell["n"] == "3" and cell["seeds"] == "0;1;2"
    assert float(cell["mean"]) == pytest.approx(mean) and float(cell["std"]) == pytest.approx(std)
    assert float(cell["paper"]) == 73.27 and float(cell["diff"]) == pytest.approx(mean - 73.27)


def test_a_student_run_named_after_another_pair_does_not_take_the_student_cell(tmp_path):
    """Probe row S8c: the vanilla runs of the pair keep the Student cell; a run whose name spells another
    pair (another student) gets a row of its own, whatever the names' sort order."""
    base = tmp_path / "runs"
    make_run(base, "zz-pair-vanilla", 0, [60.0, 64.0], method="vanilla", params={}, teacher=None,
             teacher_top1=None, student="resnet8")  # fmt: skip
    make_run(base, "zz-pair-vanilla", 1, [61.0, 63.0], method="vanilla", params={}, teacher=None,
             teacher_top1=None, student="resnet8")  # fmt: skip
    make_run(base, "aa-resnet56_resnet20-vanilla", 0, [20.0, 26.0], method="vanilla", params={},
             teacher=None, teacher_top1=None, student="resnet8")  # fmt: skip
    make_run(base, "zz-pair-kd", 0, [50.0, 65.0], method="kd", params={}, teacher="resnet20",
             student="resnet8", teacher_top1=70.0)  # fmt: skip
    best = paper_tables(collect_runs([base]))[0]
    (column,) = best.columns
    student = best.cell("Student", column)
    assert (student.n, student.mean) == (2, 63.5)  # the pair's own two seeds (best 64 and 63)
    assert [r for r in best.rows if r.startswith("Student (")] == ["Student (aa-resnet56_resnet20-vanilla)"]


def test_a_pair_name_is_read_whole():
    from types import SimpleNamespace

    from letkd.report.paper import _spells_another_pair

    models = load_paper_results().models
    alone = SimpleNamespace(teacher=None, student="resnet8x4", config="cifar100-resnet32x4_resnet8x4-vanilla")
    assert not _spells_another_pair(alone, models)  # resnet8x4 is not read as resnet8
    alone.student = "resnet8"
    assert _spells_another_pair(alone, models)  # a resnet8 run named after the resnet32x4→resnet8x4 pair
    assert not _spells_another_pair(SimpleNamespace(teacher="resnet56", student="x", config="a_b"), models)
