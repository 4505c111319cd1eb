"""DistributedDataParallel on CPU (gloo, 2 processes) through torchrun, and `letkd eval` of its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_two_processes_and_eval_of_checkpoint(tmp_path, capsys):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "letkd", "train", "configs/digits/resnet8.yaml", "--out", str(out), "--device", "cpu",
        "train.epochs=2", "train.max_steps_per_epoch=3", "data.batch_size=16", "data.train_subset=256",
        "train.progress=false", "train.tensorboard=false",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("best top-1") == 1  # rank 0 alone reports

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["train_images"] == 2 * 3 * 16 for r in rows)  # both ranks' samples are counted
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "completed"
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and not any(k.startswith("module.") for k in last["model"])

    from letkd.cli import main

    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", "digits", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 360
    assert result["top1"] == pytest.approx(summary["last_top1"], abs=1e-9)
    assert result["top5"] == pytest.approx(rows[-1]["test_top5"], abs=1e-9)
    assert result["loss"] == pytest.approx(rows[-1]["test_loss"], rel=1e-5)
