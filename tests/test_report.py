"""``letkd report``: run folders fabricated with known numbers, grouped and summarised."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from letkd.cli import main as cli_main
from letkd.config import config_from_dict
from letkd.report import (
    ReportError,
    SkippedRun,
    collect_runs,
    config_variant,
    method_label,
    strip_seed_suffix,
    summarize,
    to_markdown,
    write_report,
)

LETKD2 = {"layers": [{"kind": "subclass", "alpha": 0.2}, {"kind": "codebook", "alpha": 0.1}]}
LETKD1 = {"layers": [{"kind": "codebook", "alpha": 0.1}]}


def make_run(
    base: Path,
    name: str,
    seed: int,
    curve: list[float],
    method: str = "letkd",
    params: dict | None = None,
    teacher: str | None = "resnet56",
    student: str = "resnet20",
    dataset: str = "cifar100",
    extra_parameters: int = 1234,
    seconds: float = 10.0,
    teacher_top1: float | None = 72.3,
    summary: bool = True,
    status: str = "completed",
    overrides: dict | None = None,
) -> Path:
    """A run folder like the training engine writes, with test top-1 ``curve`` (one value per epoch)."""
    folder = base / name / f"2024010{seed}-120000"
    folder.mkdir(parents=True)
    data = {
        "name": name,
        "seed": seed,
        "data": {"name": dataset, "root": f"/data/{seed}"},  # paths differ between runs: ignored
        "model": {"name": student},
        "teacher": {"name": teacher, "checkpoint": f"ckpt{seed}.pth"} if teacher else None,
        "method": {"name": method, "params": params if params is not None else {}},
        "train": {"epochs": len(curve), "device": "cpu" if seed % 2 else "cuda"},
    }
    for key, value in (overrides or {}).items():
        data[key] = {**(data.get(key) or {}), **value}
    (folder / "config.yaml").write_text(config_from_dict(data).to_yaml())
    lines = [
        {"epoch": e, "lr": 0.05, "train_loss": 1.0 / (e + 1), "loss_ce": 0.5, "loss_kd": 0.5,
         "test_top1": acc, "test_top5": min(100.0, acc + 20), "seconds": seconds}
        for e, acc in enumerate(curve)
    ]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in lines))
    if summary:
        best_epoch = int(np.argmax(curve))
        content = {
            "status": status, "best_top1": curve[best_epoch], "best_epoch": best_epoch,
            "last_top1": curve[-1],
            "wall_seconds": seconds * len(curve), "seconds_per_epoch": seconds, "images_per_second": 900.0,
            "parameters": 278_324, "extra_parameters": extra_parameters, "device": "cpu",
        }  # fmt: skip
        if teacher_top1 is not None:
            content["teacher_top1"] = teacher_top1
        if status != "completed":
            content["error"] = "loss is nan at epoch 1"
        (folder / "summary.json").write_text(json.dumps(content))
    return folder


@pytest.fixture()
def runs(tmp_path):
    """3 seeds of letKD-2, 2 of letKD-1, 2 of KD, 1 teacher run; curves chosen so best != last."""
    base = tmp_path / "runs"
    curves = {
        ("letkd2", 0): [40.0, 71.5, 70.25], ("letkd2", 1): [42.0, 71.0, 71.75],
        ("letkd2", 2): [41.0, 72.5, 71.0],
        ("letkd1", 0): [40.0, 70.0, 69.5], ("letkd1", 1): [39.0, 69.0, 70.5],
        ("kd", 0): [35.0, 70.75, 70.5], ("kd", 1): [36.0, 70.25, 70.0],
    }  # fmt: skip
    for (kind, seed), curve in curves.items():
        if kind == "kd":
            make_run(
                base, "cifar100-resnet56_resnet20-kd", seed, curve, method="kd", params={}, extra_parameters=0
            )
        else:
            params = LETKD2 if kind == "letkd2" else LETKD1
            make_run(base, f"cifar100-resnet56_resnet20-{kind}", seed, curve, params=params)
    make_run(base, "cifar100-teacher-resnet56", 0, [50.0, 72.0], method="vanilla", teacher=None,
             student="resnet56", extra_parameters=0, teacher_top1=None)  # fmt: skip
    return base, curves


def test_helpers():
    assert method_label("letkd", LETKD2) == "letkd2" and method_label("letkd", LETKD1) == "letkd1"
    assert method_label("kd", {}) == "kd" and method_label("letkd", None) == "letkd"
    assert strip_seed_suffix("cifar100-a-letkd2-seed3") == "cifar100-a-letkd2"
    assert strip_seed_suffix("x_s12") == "x" and strip_seed_suffix("letkd2") == "letkd2"
    base = config_from_dict({"seed": 0, "data": {"name": "digits"}}).model_dump(mode="json")
    other_seed = {**base, "seed": 5, "train": {**base["train"], "device": "cuda"}}
    other_lr = {**base, "train": {**base["train"], "lr": 0.2}}
    assert config_variant(base) == config_variant(other_seed) != config_variant(other_lr)
    # a config saved before an option existed groups with one holding that option's default
    older = {"seed": 1, "data": {"name": "digits"}}
    assert config_variant(older) == config_variant(base)
    assert config_variant({**older, "train": {"schedule": {"per_step": True}}}) != config_variant(base)


def test_summary_numbers_match_independent_computation(runs):
    base, curves = runs
    records = collect_runs([base])
    assert len(records) == 8
    rows = summarize(records)
    by_label = {(r.teacher, r.label): r for r in rows}
    assert set(by_label) == {
        ("resnet56", "letkd2"),
        ("resnet56", "letkd1"),
        ("resnet56", "kd"),
        (None, "vanilla"),
    }
    for label in ("letkd2", "letkd1", "kd"):
        row = by_label[("resnet56", label)]
        seeds = sorted(s for k, s in curves if k == label)
        best = np.array([max(curves[(label, s)]) for s in seeds])
        last = np.array([curves[(label, s)][-1] for s in seeds])
        assert row.n == len(seeds) and row.seeds == seeds
        assert row.best_mean == pytest.approx(best.mean()) and row.best_std == pytest.approx(best.std(ddof=1))
        assert row.last_mean == pytest.approx(last.mean()) and row.last_std == pytest.approx(last.std(ddof=1))
        assert (
            row.dataset == "cifar100"
            and row.student == "resnet20"
            and row.teacher_top1 == pytest.approx(72.3)
        )
        assert row.seconds_per_epoch == pytest.approx(10.0)
        epochs_mean = np.mean([curves[(label, s)] for s in seeds], axis=0)
        assert [e for e, _ in row.curve] == [0, 1, 2]
        assert [a for _, a in row.curve] == pytest.approx(epochs_mean.tolist())
    assert by_label[("resnet56", "letkd2")].extra_parameters == 1234
    assert by_label[("resnet56", "kd")].extra_parameters == 0
    teacher = by_label[(None, "vanilla")]
    assert teacher.n == 1 and teacher.best_std is None and teacher.best_mean == 72.0


def test_markdown_csv_and_plot_written(runs, tmp_path):
    base, curves = runs
    out = tmp_path / "report"
    written = write_report([base], out)
    assert set(written) == {"markdown", "csv", "plot"}
    md = written["markdown"].read_text()
    best = [max(curves[("letkd2", s)]) for s in range(3)]
    last = [curves[("letkd2", s)][-1] for s in range(3)]
    expected = f"{statistics.fmean(best):.2f} ± {statistics.stdev(best):.2f}"
    line = next(l for l in md.splitlines() if "| letkd2 |" in l)
    assert expected in line and f"{statistics.fmean(last):.2f} ± {statistics.stdev(last):.2f}" in line
    assert "| cifar100 | resnet56 | resnet20 | letkd2 | 3 |" in line and "| 72.30 |" in line
    assert "| 72.00 | 72.00 |" in md  # the single teacher run: no ± part
    with open(written["csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4
    kd = next(r for r in table if r["label"] == "kd")
    kd_best = [max(curves[("kd", s)]) for s in range(2)]
    assert float(kd["best_top1_mean"]) == pytest.approx(statistics.fmean(kd_best))
    assert float(kd["best_top1_std"]) == pytest.approx(statistics.stdev(kd_best))
    assert kd["n"] == "2" and kd["seeds"] == "0;1" and kd["extra_parameters"] == "0"
    assert next(r for r in table if r["label"] == "vanilla")["best_top1_std"] == ""
    png = written["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(written["plot"]) as im:
        assert im.size[0] > 300 and im.size[1] > 200


def test_runs_differing_in_more_than_seed_are_separate_groups(tmp_path):
    base = tmp_path / "runs"
    for seed in (0, 1):
        make_run(base, "digits-a-seed" + str(seed), seed, [50.0, 60.0], params=LETKD1)
    make_run(base, "digits-a-seed2", 2, [50.0, 61.0], params=LETKD1, overrides={"train": {"lr": 0.2}})
    make_run(base, "other-name", 3, [50.0, 65.0], params=LETKD1)
    rows = summarize(collect_runs([base]))
    assert sorted(r.n for r in rows) == [1, 1, 2]
    shown = sorted(r.display for r in rows)
    assert shown == ["letkd1 (digits-a, lr=0.05)", "letkd1 (digits-a, lr=0.2)", "letkd1 (other-name)"]
    assert sorted(r.table_label for r in rows) == ["letkd1 (digits-a)"] * 2 + ["letkd1 (other-name)"]
    assert "| method | lr | n |" in to_markdown(rows)  # the setting that differs is a column


def test_runs_that_differ_only_in_where_plugins_come_from_are_one_group(tmp_path):
    base = tmp_path / "runs"
    make_run(base, "digits-a", 0, [50.0, 60.0], params=LETKD1)
    other = make_run(base, "digits-a", 1, [50.0, 62.0], params=LETKD1)
    with open(other / "config.yaml", "a") as fh:
        fh.write("imports:\n- my_kd\n")  # the same run, with its method's module named in the config
    (row,) = summarize(collect_runs([base]))
    assert row.n == 2


def test_bad_runs_are_skipped_with_reasons(runs):
    base, _ = runs
    make_run(base, "unfinished", 0, [10.0, 20.0], summary=False)
    make_run(base, "diverged", 0, [10.0, 20.0], status="diverged")
    broken_summary = make_run(base, "broken-summary", 0, [10.0])
    (broken_summary / "summary.json").write_text("{not json")
    broken_metrics = make_run(base, "broken-metrics", 0, [10.0])
    with open(broken_metrics / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 1, "test_to')
    broken_config = make_run(base, "broken-config", 0, [10.0])
    (broken_config / "config.yaml").write_text("name: [unclosed\n")
    skipped: list[SkippedRun] = []
    records = collect_runs([base], skipped)
    assert len(records) == 8
    reasons = {s.path.parent.name: s.reason for s in skipped}
    assert set(reasons) == {"unfinished", "diverged", "broken-summary", "broken-metrics", "broken-config"}
    assert "no summary.json" in reasons["unfinished"]
    assert "diverged" in reasons["diverged"] and "nan" in reasons["diverged"]
    assert "summary.json: not valid JSON" in reasons["broken-summary"]
    assert "metrics.jsonl line 2" in reasons["broken-metrics"]
    assert "config.yaml" in reasons["broken-config"]
    with pytest.warns(UserWarning, match="skipping .*unfinished"):
        collect_runs([base / "unfinished"])
    with_unfinished = collect_runs([base / "unfinished"], [], include_unfinished=True)
    assert with_unfinished[0].best_top1 == 20.0 and with_unfinished[0].last_top1 == 20.0


def test_missing_paths_and_empty_folders_are_errors(tmp_path):
    with pytest.raises(ReportError, match="no such file or folder"):
        collect_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no run folders"):
        collect_runs([tmp_path / "empty"])
    make_run(tmp_path / "only", "bad", 0, [1.0], summary=False)
    with pytest.raises(ReportError, match="(?s)no usable runs found.*no summary.json"):
        write_report([tmp_path / "only"], tmp_path / "out")


def test_command_prints_table_and_lists_skipped(runs, tmp_path, capsys):
    base, _ = runs
    make_run(base, "unfinished", 0, [10.0], summary=False)
    out = tmp_path / "out"
    run_dir = next((base / "cifar100-resnet56_resnet20-kd").iterdir())
    assert (
        cli_main(["report", str(base), str(run_dir), "--out", str(out)]) == 0
    )  # a run given twice counts once
    captured = capsys.readouterr()
    assert to_markdown(summarize(collect_runs([base], []))) in captured.out
    assert "8 runs in 4 groups" in captured.out
    assert "skipped" in captured.err and "unfinished" in captured.err
    assert (
        (out / "report.md").is_file() and (out / "report.csv").is_file() and (out / "accuracy.png").is_file()
    )
    assert "## Skipped runs" in (out / "report.md").read_text()
    assert cli_main(["report", str(tmp_path / "nope")]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_command_help_is_complete(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["report", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("RUN_DIR", "--out", "--include-unfinished", "report.md", "report.csv", "accuracy.png"):
        assert word in text
