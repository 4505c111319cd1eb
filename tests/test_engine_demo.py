"""`letkd demo --quick`: every demo stage runs end to end on the real Fashion-MNIST (a few steps each)."""

from __future__ import annotations

import json

import pytest

from letkd.cli import main
from letkd.commands.demo import DEMO_STAGES, configs_dir
from letkd.config import load_config


def fashion_mnist_available() -> bool:
    from letkd.data.fashion_mnist import find_folder

    try:
        find_folder()
    except FileNotFoundError:
        return False
    return True


def test_demo_stages_name_existing_configs():
    for stage in DEMO_STAGES:
        cfg = load_config(configs_dir() / stage.config, list(stage.overrides))
        assert cfg.data.name == "fashion_mnist"


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed (see 'make data')")
def test_demo_quick_runs_every_stage(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for stage in DEMO_STAGES:
        summary = json.loads((tmp_path / stage.label / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["dataset"] == "fashion_mnist"
        assert f"{stage.label} {summary['model']}: test top-1 {summary['last_top1']:.2f}%" in out
    assert f"all runs in {tmp_path}" in out
