"""Every ``letkd report --layout`` of the paper renders on tiny digits runs made once here (one epoch of two
steps each): the pair tables in the paper's row order, the ablation rows, the probe table after
``letkd probe``, and Fig. 1 as a plot with the paper's points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from matplotlib import image as mpimg

from letkd.cli import main as cli_main
from letkd.config import load_config
from letkd.pipeline import run_pipeline
from letkd.report import collect_runs
from letkd.report.layouts import layout_names, write_layout
from letkd.report.paper_data import load_paper_results

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "train.epochs=1", "train.max_steps_per_epoch=2", "data.batch_size=32", "data.train_subset=160",
    "data.test_subset=60", "train.progress=false", "train.tensorboard=false", "supervision.kmeans_iters=5",
]  # fmt: skip
# (run folder, digits config, seed, changes to method.params)
RUNS = [
    ("vanilla", "vanilla.yaml", 0, None),
    ("vanilla", "vanilla.yaml", 1, None),
    ("kd", "kd.yaml", 0, None),
    ("fitnet", "fitnet.yaml", 0, None),
    ("letkd2", "letkd2.yaml", 0, None),
    ("letkd2-inter0", "letkd2.yaml", 0, lambda p: p["layers"][0].update(alpha=0.0)),
    ("fitnet_kdlayer", "letkd1.yaml", 0, "compose"),
]

pytestmark = pytest.mark.usefixtures("one_thread")


def _fitnet_and_kd_layer(params: dict) -> dict:
    """Table 6's composition on digits: FitNet's hint, then letKD-1's layer."""
    return {"parts": [{"method": "fitnet", "params": {"weight": 1.0}}, {"method": "letkd", "params": params}]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """The digits runs of every layout, in one folder like a sweep's (random teacher, cached supervision)."""
    from letkd.models import create_model, save_weights

    folder = tmp_path_factory.mktemp("paper")
    torch.manual_seed(0)
    save_weights(create_model("resnet20", 10), folder / "teacher.pt")
    teacher = [f"teacher.checkpoint={folder / 'teacher.pt'}", "teacher.train_config=null",
               f"supervision.cache_dir={folder / 'art'}"]  # fmt: skip
    for name, config, seed, change in RUNS:
        overrides = FAST + [f"seed={seed}", f"name=digits-{name}"] + (teacher if name != "vanilla" else [])
        cfg = load_config(ROOT / "configs" / "digits" / config, overrides)
        if change == "compose":
            cfg.method.name, cfg.method.params = "compose", _fitnet_and_kd_layer(cfg.method.params)
        elif change is not None:
            change(cfg.method.params)
        assert run_pipeline(cfg, run_dir=folder / "runs" / name / f"seed{seed}")["status"] == "completed"
    return folder / "runs"


def _report(sweep: Path, tmp_path: Path, layout: str, capsys) -> tuple[str, Path]:
    out = tmp_path / layout
    assert cli_main(["report", str(sweep), "--out", str(out), "--layout", layout]) == 0
    return capsys.readouterr().out, out


def test_pairs_rows_follow_the_paper(sweep, tmp_path, capsys):
    text, out = _report(sweep, tmp_path, "pairs", capsys)
    rows = [
        line.split("|")[1].strip()
        for line in text.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    best = rows[1 : rows.index("method", 1)]  # the best-epoch table, below its header
    assert best == ["Teacher", "Student", "KD", "FitNet", "letKD-2", "letKD-2 (digits-letkd2-inter0)",
                    "fitnet+letkd1"], best  # fmt: skip
    student = next(line for line in text.splitlines() if line.startswith("| Student |"))
    assert "± " in student and "(n=2)" in student  # two seeds of the student alone
    assert (out / "pairs.md").is_file() and (out / "pairs.csv").is_file()


def test_each_pair_table_renders_with_its_name(sweep, tmp_path, capsys):
    records = collect_runs([sweep])
    for layout in ("table1", "table2", "table3"):
        if layout == "table1":  # through the command once; the others through what it calls
            text, out = _report(sweep, tmp_path, layout, capsys)
        else:
            text, _ = write_layout(layout, records, out := tmp_path / layout)
        name = load_paper_results().entry(layout).name
        assert f"### {name} layout — digits top-1, best epoch" in text
        assert "| letKD-2 |" in text and "| Student |" in text and "(n=2)" in text
        assert (out / f"{layout}.md").read_text().count("###") == 2  # best and last epoch
        assert (out / f"{layout}.csv").is_file()


def test_table5_puts_each_run_in_its_row(sweep, tmp_path, capsys):
    text, out = _report(sweep, tmp_path, "table5", capsys)
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| Inter")}
    assert len(lines) == 8  # the paper's eight rows, each with its number
    both = [c.strip() for c in lines["Inter. ✓ α 1 · Penult. ✓ α 1"].split("|")]
    best = json.loads(next((sweep / "letkd2").glob("*/summary.json")).read_text())["best_top1"]
    assert both[2] == f"{best:.2f}" and both[4:6] == ["1", "73.27"] and both[6] == f"{best - 73.27:+.2f}"
    assert [c.strip() for c in lines["Inter. ✓ α 0 · Penult. ✓ α 1"].split("|")][4:6] == ["1", "72.13"]
    assert [c.strip() for c in lines["Inter. ✓ α 0 · Penult. –"].split("|")][2:6] == ["—", "—", "0", "70.64"]
    assert "Our runs: digits, resnet20→resnet8; the paper's numbers: cifar100, resnet56→resnet20." in text
    csv_rows = (out / "table5.csv").read_text().splitlines()
    assert len(csv_rows) == 9 and csv_rows[0].startswith("table,setting,row,n,seeds")


def test_table6_tells_the_kd_layer_with_its_loss_from_fitnet(sweep, tmp_path, capsys):
    text, _ = _report(sweep, tmp_path, "table6", capsys)
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| FitNet")]
    cells = {row[1].strip(): [c.strip() for c in row[2:]] for row in rows}
    assert cells["FitNet"][2:4] == ["1", "71.59"]
    assert cells["FitNet + KD layer with its loss"][2:4] == ["1", "73.36"]
    assert cells["FitNet + KD layer without its loss"][2:4] == ["0", "71.80"]


def test_table4_reads_the_probes_of_the_runs(sweep, tmp_path, capsys):
    text, _ = _report(sweep, tmp_path, "table4", capsys)
    assert "have no probe.json yet: `letkd probe sweeps/table5` writes it" in text
    assert cli_main(["probe", str(sweep / "letkd2-inter0"), str(sweep / "letkd2"), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("LDA test top-1" in line for line in lines)  # input and output of 2 runs
    probe = json.loads((sweep / "letkd2" / "seed0" / "probe.json").read_text())
    assert probe["path"] == "layer3.0" and set(probe["features"]) == {"input", "output"}
    assert probe["train_images"] == 160 and probe["test_images"] == 60
    text, _ = _report(sweep, tmp_path, "table4", capsys)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:]] for line in text.splitlines()
            if line.startswith("| α_inter")}  # fmt: skip
    output = probe["features"]["output"]["test_top1"]
    assert rows["α_inter = 1: KD-layer output x̂"] == [
        f"{output:.2f}",
        "1",
        "56.36",
        f"{output - 56.36:+.2f}",
        "",
    ]
    assert rows["α_inter = 0: KD-layer input x (= output)"][1:3] == ["1", "52.71"]
    assert "no probe.json" not in text
    # a plain student at a named tap: one feature set
    plain_run = str(sweep / "vanilla" / "seed0")
    assert cli_main(["probe", plain_run, "--tap", "layer2", "--json", "--device", "cpu"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["path"] == "layer2" and list(plain["features"]) == ["tap"]
    assert plain["features"]["tap"]["dim"] == 32 and 0 <= plain["features"]["tap"]["test_top1"] <= 100


def test_fig1_is_a_plot_with_the_papers_points(sweep, tmp_path, capsys):
    text, out = _report(sweep, tmp_path, "fig1", capsys)
    rows = [line for line in text.splitlines() if line.startswith("| K_inter")]
    assert [r.split("|")[1].strip() for r in rows] == [f"K_inter (sub-classes per class) = {k}" for k in
                                                       (1, 2, 4, 8, 16, 32)]  # fmt: skip
    two = [c.strip() for c in rows[1].split("|")]
    assert two[4] == "1" and two[5] == "—"  # our digits run (K 2): no paper point there
    assert [c.strip() for c in rows[3].split("|")][4:6] == ["0", "73.27"]
    image = mpimg.imread(out / "fig1.png")
    assert image.shape[0] > 200 and image.shape[1] > 300


def test_every_layout_is_covered():
    assert set(layout_names()) == {"groups", "pairs", "table1", "table2", "table3", "table4", "table5",
                                   "table6", "fig1"}  # fmt: skip
