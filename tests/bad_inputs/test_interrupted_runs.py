"""Runs killed with SIGKILL (in the student's training, in the teacher's training) and run again complete;
two runs into one folder: the second is refused with the lock message, the first completes. The killed or
first run is a ``letkd run`` process; the second one runs in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bad_inputs.conftest import FAST, ROOT
from letkd.cli import main

KD = str(ROOT / "configs" / "digits" / "kd.yaml")
#: long enough to be killed mid-way, short enough to finish in seconds: 3 epochs of 3 steps
SLOW = [o for o in FAST if not o.startswith(("train.epochs=", "train.max_steps"))] + [
    "train.epochs=3",
    "train.max_steps_per_epoch=3",
]


def _letkd_run(cwd: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "letkd", "run", *args, "--device", "cpu"]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.01)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def _main(cwd: Path, monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def _completed(run: Path, epochs: int) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == epochs
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(epochs))


@pytest.mark.slow
def test_killed_in_the_students_training_then_resumed(workspace, tmp_path, monkeypatch, capsys):
    args = [
        KD,
        "teacher.train_config=null",
        f"teacher.checkpoint={workspace / 'files' / 'teacher.pt'}",
        *SLOW,
    ]
    run = tmp_path / "student"
    victim = _letkd_run(tmp_path, *args, "--out", str(run))
    _wait_for(victim, (run / "last.pt").exists, "the student's first checkpoint")
    _kill(victim)
    code, err = _main(tmp_path, monkeypatch, capsys, ["run", *args, "--out", str(run), "--resume"])
    assert code == 0, err
    assert "resuming from" in err
    _completed(run, 3)


@pytest.mark.slow
def test_killed_in_the_teachers_training_then_run_again(tmp_path, monkeypatch, capsys):
    teacher = yaml.safe_load((ROOT / "configs" / "digits" / "teacher.yaml").read_text())
    teacher["data"] |= {"train_subset": 64, "test_subset": 32, "batch_size": 16}
    teacher["train"] |= {"epochs": 3, "max_steps_per_epoch": 3, "tensorboard": False}
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    args = [KD, "teacher.train_config=teacher.yaml", *FAST, "--out", str(tmp_path / "student")]
    victim = _letkd_run(tmp_path, *args)
    teachers = tmp_path / "runs" / "teachers"
    _wait_for(victim, lambda: any(teachers.glob("*/last.pt")), "the teacher's first checkpoint")
    _kill(victim)
    code, err = _main(tmp_path, monkeypatch, capsys, ["run", *args])
    assert code == 0, err
    assert "(resuming)" in err  # the teacher continued from its last.pt
    (teacher_run,) = teachers.iterdir()
    _completed(teacher_run, 3)
    _completed(tmp_path / "student", 1)


@pytest.mark.slow
def test_second_run_into_the_same_folder_is_refused(tmp_path, monkeypatch, capsys):
    run = tmp_path / "shared"
    first = _letkd_run(tmp_path, str(ROOT / "configs" / "digits" / "resnet8.yaml"), *SLOW, "--out", str(run))
    lock = run / ".lock"
    _wait_for(first, lambda: lock.is_file() and lock.read_text().strip() != "", "the first run's lock")
    argv = ["run", str(ROOT / "configs" / "digits" / "resnet8.yaml"), *SLOW, "--out", str(run)]
    code, err = _main(tmp_path, monkeypatch, capsys, argv)
    assert code == 1
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"another process (pid {first.pid}) is running in {run}" in line
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    _completed(run, 3)
