"""Exact resume: a run killed with SIGKILL and resumed ends bitwise identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"seconds", "images_per_second"}
RUN_ARGS = [
    "configs/digits/resnet8.yaml",
    "train.epochs=4",
    "train.max_steps_per_epoch=3",
    "train.deterministic=true",
    "data.batch_size=32",
    "data.train_subset=320",
    "data.test_subset=64",
    "train.schedule.type=step",
    "train.schedule.milestones=[2]",
    "train.progress=false",
    "train.tensorboard=false",
]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _train(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "letkd", "train", *RUN_ARGS, "--out", str(out), "--device", "cpu", *extra]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _train_in_process(out: Path) -> None:
    """The same run inside the test process, with the subprocesses' single thread (for identical kernels)."""
    from letkd.config import load_config
    from letkd.pipeline import train_from_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_from_config(load_config(ROOT / RUN_ARGS[0], RUN_ARGS[1:]), out, device="cpu")
    finally:
        torch.set_num_threads(threads)


def _history(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    killed_dir = tmp_path / "killed"
    victim = _train(killed_dir)
    deadline = time.monotonic() + 240
    while not (killed_dir / "last.pt").exists():
        assert victim.poll() is None, f"run ended before its first checkpoint:\n{victim.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)  # somewhere in the next epoch, or while writing its files
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert len(_history(killed_dir)) < 4

    resumed = _train(killed_dir, "--resume")
    _train_in_process(tmp_path / "reference")  # meanwhile, the uninterrupted run
    out_resumed, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out_resumed
    assert "resuming from" in out_resumed

    a = torch.load(tmp_path / "reference" / "last.pt", weights_only=True)
    b = torch.load(killed_dir / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert (a["best_top1"], a["best_epoch"]) == (b["best_top1"], b["best_epoch"])
    assert _history(tmp_path / "reference") == _history(killed_dir)
    summary_a = json.loads((tmp_path / "reference" / "summary.json").read_text())
    summary_b = json.loads((killed_dir / "summary.json").read_text())
    assert summary_a["last_top1"] == summary_b["last_top1"]


def test_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    from letkd.cli import main

    config = str(ROOT / "configs/digits/resnet8.yaml")
    code = main(["train", config, "--out", str(tmp_path / "nothing"), "--resume"])
    assert code == 1
    assert "no checkpoint" in capsys.readouterr().err
