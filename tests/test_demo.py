"""``letkd demo`` end to end on the real Fashion-MNIST with a tiny budget (the real demo's code path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from letkd.cli import main
from letkd.commands.demo import DEMO_METHODS, locate_demo_configs
from letkd.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = {"train_subset": 384, "test_subset": 300}


def fashion_mnist_available() -> bool:
    from letkd.data.fashion_mnist import find_folder

    try:
        find_folder()
    except FileNotFoundError:
        return False
    return True


def test_demo_configs_cover_every_method_with_one_budget():
    folder = locate_demo_configs()
    budgets = set()
    for method in DEMO_METHODS:
        cfg = load_config(folder / f"{method}.yaml")
        assert cfg.data.name == "fashion_mnist"
        budgets.add((cfg.seed, cfg.model.name, cfg.data.train_subset, cfg.train.epochs, cfg.data.batch_size))
        if method != "vanilla":
            assert cfg.teacher is not None and Path(cfg.teacher.train_config).name == "teacher.yaml"
    assert len(budgets) == 1, "every demo method must get the same student, budget and seed"


def _tiny_configs(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for src in locate_demo_configs().glob("*.yaml"):
        data = yaml.safe_load(src.read_text())
        data["data"].update(TINY)
        data["train"]["epochs"] = 1
        for layer in data.get("method", {}).get("params", {}).get("layers", []):
            if layer["kind"] == "codebook":
                layer["num_templates"] = 16
            else:
                layer["subclasses_per_class"] = 2
        (dst / src.name).write_text(yaml.safe_dump(data))
    return dst


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed (see 'make data')")
def test_demo_runs_every_method_and_reuses_completed_runs(tmp_path, capsys):
    configs = _tiny_configs(tmp_path / "configs")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["demo", "--configs", str(configs), "--out", "out", "train.progress=false"]) == 0
        first = capsys.readouterr()
        table = first.out
        for label in DEMO_METHODS:
            assert f"| {label} |" in table
        assert (tmp_path / "out" / "report" / "report.md").is_file()
        assert (tmp_path / "out" / "report" / "accuracy.png").stat().st_size > 1000
        # supervision is fitted on the student's training subset (every location of 384 images)
        from letkd.supervision.store import read_metadata

        metas = [read_metadata(p) for p in (tmp_path / "artifacts").glob("*.safetensors")]
        assert metas and all(m["num_images"] == TINY["train_subset"] for m in metas)
        assert all(m["num_rows"] == TINY["train_subset"] * 64 for m in metas)
        assert (
            main(
                [
                    "demo",
                    "--configs",
                    str(configs),
                    "--out",
                    "out",
                    "train.progress=false",
                    "--methods",
                    "vanilla",
                    "letkd1",
                ]
            )
            == 0
        )
        second = capsys.readouterr()
        assert second.err.count("reusing the completed run") == 2
    finally:
        os.chdir(old)


def test_demo_unknown_method_is_a_clear_error(capsys):
    assert main(["demo", "--methods", "nope", "--out", "unused"]) == 1
    assert "no demo config for method 'nope'" in capsys.readouterr().err
