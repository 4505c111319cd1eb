"""The paper as data: its ablation numbers are those of docs/SPEC.md §8.4, every row of Tables 4–6 and Fig. 1
has exactly the configs that make it, and ``letkd paper`` lists every entry with its commands, runs and an
estimated cost (said to be an estimate)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from letkd.build import check_run
from letkd.cli import main as cli_main
from letkd.commands.paper import _seconds
from letkd.config import ConfigError, load_config
from letkd.methods import get_method
from letkd.models import create_model, feature_stages
from letkd.report.ablation import matches, run_facets
from letkd.report.paper_data import load_paper_results
from letkd.report.plan import method_ratio, plan_entry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _spec_84() -> str:
    text = (ROOT / "docs" / "SPEC.md").read_text()
    return text.split("### 8.4 ")[1].split("\n---")[0]


def test_ablation_numbers_are_those_of_the_spec():
    spec, results = _spec_84(), load_paper_results()
    fig1 = re.findall(r"(\d+) → ≈(\d+\.\d+)", spec)
    assert results.entry("fig1").points == [(float(k), float(v)) for k, v in fig1]
    table5 = [float(line.split("|")[5]) for line in spec.splitlines() if re.match(r"\| [✓–] \|", line)]
    assert [row.paper for row in results.entry("table5").rows] == table5
    marks = [line.split("|")[1:5] for line in spec.splitlines() if re.match(r"\| [✓–] \|", line)]
    for row, (inter, a_inter, pen, a_pen) in zip(results.entry("table5").rows, marks):
        want = {"inter_alpha": float(a_inter) if inter.strip() == "✓" else None,
                "pen_alpha": float(a_pen) if pen.strip() == "✓" else None}  # fmt: skip
        assert {k: row.match[k] for k in want} == want, row.label
    flat = spec.replace("\n", " ")
    number = r"(\d+\.\d+)"
    with_kd = r"FitNet \+ KD layer with"
    table6 = re.search(rf"FitNet {number}; {with_kd}out .* {number}; {with_kd} .* {number}", flat)
    assert [row.paper for row in results.entry("table6").rows] == [float(x) for x in table6.groups()]
    table4 = re.search(rf"α_inter = 0: {number}; .* input x {number}, KD-layer output x̂ {number}", flat)
    assert [row.paper for row in results.entry("table4").rows] == [float(x) for x in table4.groups()]


def _configs(entry) -> list[Path]:
    return [p for s in entry.sweeps for pattern in s.configs for p in sorted(ROOT.glob(pattern))]


@pytest.mark.parametrize("entry_id", ["table4", "table5", "table6"])
def test_each_ablation_row_is_made_by_exactly_one_config(entry_id):
    entry = load_paper_results().entry(entry_id)
    facets = {p: run_facets(yaml.safe_load(p.read_text())) for p in _configs(entry)}
    for row in entry.rows:
        found = [p.name for p, f in facets.items() if matches(f, row.match)]
        assert len(found) == 1, (row.label, found)
    for path in facets:
        cfg = load_config(path)
        assert (cfg.data.name, cfg.teacher.name, cfg.model.name) == (entry.dataset, *entry.pair)
        assert cfg.teacher.checkpoint == f"crd:{entry.pair[0]}" and cfg.train.epochs == 240


def test_fig1_grid_varies_the_sub_classes_of_letkd2s_intermediate_layer():
    entry = load_paper_results().entry("fig1")
    (sweep,) = entry.sweeps
    ((key, values),) = sweep.grid.items()
    assert values == [int(x) for x, _ in entry.points]
    cfg = yaml.safe_load((ROOT / sweep.configs[0]).read_text())
    index = int(key.split(".")[3])
    layer = cfg["method"]["params"]["layers"][index]
    assert key == f"method.params.layers.{index}.subclasses_per_class" and layer["kind"] == "subclass"
    assert matches(run_facets(cfg), {**entry.match, entry.x: layer["subclasses_per_class"]})


def test_compositions_of_the_paper_build_and_their_taps_fit():
    cfg = load_config(
        ROOT / "configs/ablations/table6/fitnet_kdlayer.yaml"
    )  # (the other differs by a weight)
    check_run(cfg, get_method("compose").parse_params(cfg.method.params), 100)
    for path in sorted(
        ROOT.glob("configs/imagenet/*/at_kd.yaml")
    ):  # AT pairs the four stages of each network
        cfg = load_config(path)
        (at, kd) = get_method("compose").parse_params(cfg.method.params).parts
        assert (at.method, kd.method, at.params["weight"], kd.params["kd_weight"]) == (
            "at",
            "kd",
            1000.0,
            0.5,
        )
        stages = [
            len(feature_stages(create_model(name, 1000))) for name in (cfg.model.name, cfg.teacher.name)
        ]
        assert stages == [4, 4]


def test_every_entry_has_its_configs_and_a_cost():
    results = load_paper_results()
    seconds = results.cost.epoch_seconds
    for entry in results.entries:
        plan = plan_entry(entry, results, ROOT, seconds)
        assert plan.runs > 0 and plan.gpu_hours > 0, entry.id
        assert not [p for s in plan.sweeps for p in s.problems + s.unpriced], entry.id
    assert plan_entry(
        results.entry("table3"), results, ROOT, seconds
    ).teachers  # Tiny-ImageNet trains its own
    cost = results.cost
    assert method_ratio("at+kd", cost) == pytest.approx(
        1 + (cost.step_ratio["at"] - 1) + (cost.step_ratio["kd"] - 1) - cost.teacher_forward
    )
    assert method_ratio("letkd", cost) is None


def test_letkd_paper_lists_every_entry_and_says_the_cost_is_estimated(capsys):
    assert cli_main(["paper"]) == 0
    text = capsys.readouterr().out
    results = load_paper_results()
    for entry in results.entries:
        assert f"\n{entry.id:<7} {entry.title}\n" in text
        for command in entry.commands():
            assert command in text
    flat = " ".join(text.split())
    assert "ESTIMATES, not measurements" in flat and "no GPU has run these configs yet" in flat
    table5 = re.search(r"table5 .*?runs +(\d+) .*?≈ ([\d,.]+) GPU-hours", text, re.S)
    assert table5[1] == "40"  # 8 rows x 5 seeds
    seconds = _seconds(["cifar100=24"], results.cost.epoch_seconds)
    doubled = plan_entry(results.entry("table5"), results, ROOT, seconds).gpu_hours
    assert doubled == pytest.approx(2 * float(table5[2].replace(",", "")), abs=1)


def test_letkd_paper_id_prints_its_commands(capsys):
    assert cli_main(["paper", "fig1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# Fig. 1") and "ESTIMATED" in lines[0]
    assert lines[-2:] == [
        "letkd sweep configs/cifar100/resnet56_resnet20/letkd2.yaml "
        "--grid method.params.layers.0.subclasses_per_class=1,4,8,16,32 --seeds 5 --out sweeps/fig1",
        "letkd report sweeps/fig1 --layout fig1",
    ]
    assert cli_main(["paper", "table9"]) == 1
    assert "unknown table or figure 'table9'; known: table1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="expected DATASET=SECONDS"):
        _seconds(["cifar100=fast"], {})
