"""What a person reads at the end: `letkd run`'s last line, and single-epoch groups in accuracy.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb

from letkd.cli import main
from letkd.commands.train import summary_line
from letkd.report import collect_runs, summarize
from letkd.report.write import accuracy_figure
from test_report import make_run

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = {
    "status": "completed", "teacher_top1": 97.5, "best_top1": 85.5555, "best_epoch": 1, "epochs": 3,
    "last_top1": 84.0, "extra_parameters": 33_296, "wall_seconds": 12.4,
    "run_dir": "runs/digits-letkd1/20261208-011914",
}  # fmt: skip


def test_summary_line_reads_as_a_sentence():
    line = summary_line(SUMMARY)
    assert line == (
        "teacher top-1 97.50%; best top-1 85.56% (epoch 2/3), last top-1 84.00%, 33,296 extra parameters "
        "kept in the student, 12 s; run folder: runs/digits-letkd1/20261208-011914"
    )
    bare = summary_line({**SUMMARY, "teacher_top1": None, "extra_parameters": 0})
    assert bare.startswith("best top-1 85.56%") and "extra" not in bare


def test_run_ends_with_the_line_and_json_on_request(monkeypatch, capsys):
    monkeypatch.setattr("letkd.pipeline.run_pipeline", lambda cfg, **kwargs: dict(SUMMARY))
    config = str(ROOT / "configs/digits/kd.yaml")
    assert main(["run", config]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == summary_line(SUMMARY) and not out[-1].startswith("{")
    assert main(["run", config, "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["best_top1"] == SUMMARY["best_top1"] and data["run_dir"] == SUMMARY["run_dir"]


def test_a_single_epoch_group_is_visible_in_the_plot(tmp_path):
    make_run(tmp_path, "one-epoch", 0, [41.0])
    make_run(tmp_path, "long", 0, [10.0 + e for e in range(100)], method="kd", params={})
    rows = summarize(collect_runs([tmp_path]))
    fig = accuracy_figure(rows)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    ax = fig.axes[0]
    for line in ax.lines:
        x, y = line.get_xdata()[0], line.get_ydata()[0]
        col, row = ax.transData.transform((x, y))
        row = pixels.shape[0] - int(round(row))  # display y counts up from the bottom
        colour = np.array(to_rgb(line.get_color())) * 255
        patch = pixels[row - 2 : row + 3, int(round(col)) - 2 : int(round(col)) + 3]
        assert (np.abs(patch - colour).sum(axis=-1) < 60).any(), f"{line.get_label()} not drawn at its point"
