"""``letkd report`` grouping: distinct seeds (repeats named, counted once), seeds and epochs in the table,
unfinished runs marked, and the settings a grid sweep varies shown as columns."""

from __future__ import annotations

import csv
import statistics

import pytest

from letkd.cli import main as cli_main
from letkd.report import collect_runs, summarize, to_markdown, write_report
from letkd.report.summary import seeds_text
from test_report import LETKD2, make_run


def _line(markdown: str, phrase: str) -> list[str]:
    line = next(l for l in markdown.splitlines() if phrase in l)
    return [c.strip() for c in line.strip("|").split("|")]


def _header(markdown: str) -> list[str]:
    return [c.strip() for c in markdown.splitlines()[0].strip("|").split("|")]


def test_seeds_are_counted_once_and_repeats_are_named(tmp_path, capsys):
    base = tmp_path / "runs"
    first = make_run(base, "kd", 0, [30.0, 40.0], method="kd", params={})
    again = make_run(base / "again", "kd", 0, [30.0, 44.0], method="kd", params={})  # seed 0 once more
    make_run(base, "kd", 1, [30.0, 50.0], method="kd", params={})
    (row,) = summarize(collect_runs([base]))
    assert row.n == 2 and row.seeds == [0, 1] and len(row.runs) == 3
    assert sorted(row.repeats[0]) == sorted([first, again])
    seed0 = statistics.fmean([40.0, 44.0])  # a repeated seed counts once: the mean of its runs
    assert row.best_mean == pytest.approx(statistics.fmean([seed0, 50.0]))
    assert row.best_std == pytest.approx(statistics.stdev([seed0, 50.0]))
    cells = dict(zip(_header(to_markdown([row])), _line(to_markdown([row]), "| kd |")))
    assert cells["n"] == "2 (+1 repeat)" and cells["seeds"] == "0,1" and cells["epochs"] == "2"

    assert cli_main(["report", str(base), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    (warning,) = [l for l in err.splitlines() if l.startswith("warning:")]
    assert "seed 0 has 2 runs" in warning and str(first) in warning and str(again) in warning
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Repeated seeds" in md and str(again) in md
    with open(tmp_path / "r" / "report.csv") as fh:
        (line,) = list(csv.DictReader(fh))
    assert line["n"] == "2" and line["seeds"] == "0;1" and line["repeated_seeds"] == "0x2"


def test_unfinished_runs_show_the_epochs_they_trained(tmp_path):
    base = tmp_path / "runs"
    make_run(base, "a", 0, [30.0, 40.0, 45.0], method="kd", params={})
    make_run(base, "a", 1, [31.0], method="kd", params={}, summary=False, overrides={"train": {"epochs": 3}})
    rows = summarize(collect_runs([base], [], include_unfinished=True))
    (row,) = rows
    assert row.unfinished and row.epochs == "1-3/3"
    assert dict(zip(_header(to_markdown(rows)), _line(to_markdown(rows), "| kd |")))["epochs"] == "1-3/3"
    (done,) = summarize(collect_runs([base], []))  # without --include-unfinished: only the finished run
    assert not done.unfinished and done.epochs == "3" and done.n == 1


def test_grid_keys_become_columns(tmp_path):
    """Runs of one config differing in a list item and the learning rate (as a grid sweep makes them)."""
    base = tmp_path / "runs"
    for k in (1, 4):
        for lr in (0.05, 0.1):
            params = {"layers": [{**LETKD2["layers"][0], "subclasses_per_class": k}, LETKD2["layers"][1]]}
            for seed in (0, 1, 2):
                make_run(base / f"k{k}-lr{lr}", "c100-letkd2", seed, [40.0 + k, 50.0 + k + 10 * lr],
                         params=params, overrides={"train": {"lr": lr}})  # fmt: skip
    make_run(base, "c100-kd", 0, [40.0, 45.0], method="kd", params={})  # another config: no column
    rows = summarize(collect_runs([base]))
    assert len(rows) == 5 and all(r.n == 3 and r.seeds == [0, 1, 2] for r in rows if r.label == "letkd2")
    md = to_markdown(rows)
    assert _header(md)[3:8] == ["method", "subclasses_per_class", "lr", "n", "seeds"]
    grid = [_line(md, f"| letkd2 | {k} | {lr} |") for k in (1, 4) for lr in (0.05, 0.1)]
    assert [cells[7] for cells in grid] == ["0-2"] * 4
    assert [float(cells[9].split()[0]) for cells in grid] == [51.5, 52.0, 54.5, 55.0]
    assert "| kd | — | 0.05 | 1 |" in md  # its own values, "—" for a key it does not have
    assert len({r.display for r in rows}) == 5  # labels stay unique (plot legend, paper layout)
    written = write_report([base], tmp_path / "r")
    with open(written["csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert {"method.params.layers.0.subclasses_per_class", "train.lr"} <= set(table[0])


def test_seed_ranges_are_compact():
    assert seeds_text([0, 1, 2, 3, 4]) == "0-4" and seeds_text([5, 0, 2]) == "0,2,5"
    assert seeds_text([0, 1, 2, 7, 8]) == "0-2,7,8" and seeds_text([3]) == "3"
