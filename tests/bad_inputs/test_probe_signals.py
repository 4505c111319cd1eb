# ruff: noqa: E501  (the commands read best on one line)
"""The signal rows of the probe table (G1-G5): Ctrl-C (SIGINT) and SIGTERM while the supervision is fitted
and while a student trains. The signal is sent by the process to itself at the moment the probe sent it
(in-process: during K-means; in epoch 2 of 3), so the real handlers run; G5 sends it to a running
``letkd sweep`` and its ``letkd run`` child. An interrupted run must resume to exactly the weights of an
uninterrupted one, every message counts epochs from 1 and says how to go on, and nothing is left behind
(no lock, no folder holding only a lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bad_inputs.cases import TEACHER
from bad_inputs.conftest import FAST, ROOT
from letkd.checkpoints import read_checkpoint
from letkd.cli import main

SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
#: three short epochs of KD from the shared untrained teacher
THREE = [o for o in FAST if not o.startswith(("train.epochs=", "train.max_steps"))]
THREE += ["train.epochs=3", "train.max_steps_per_epoch=3", *TEACHER.split()]


def letkd(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "last.pt")["model"]


pytestmark = pytest.mark.usefixtures("one_thread")  # as the child processes (OMP_NUM_THREADS=1): same sums


@pytest.fixture(scope="module")
def reference(one_thread, workspace, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The student of an uninterrupted three-epoch run (one thread)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    old = os.getcwd()
    os.chdir(workspace)
    try:
        assert main(["run", "configs/digits/kd.yaml", *THREE, "--out", str(run)]) == 0
    finally:
        os.chdir(old)
    return weights(run)


@pytest.mark.parametrize("signum, code, word", SIGNALS, ids=["G2-SIGINT", "G4-SIGTERM"])
def test_a_signal_in_training_keeps_the_exact_checkpoint(
    signum, code, word, reference, workspace, tmp_path, monkeypatch, capsys
):
    from letkd.engine.trainer import Trainer

    consume = Trainer._consume

    def signalled(self, pending, epoch, names, meter, bar):
        if epoch == 1 and pending[0] == 1:  # epoch 2 of 3, mid-way: the probe's moment
            os.kill(os.getpid(), signum)
        return consume(self, pending, epoch, names, meter, bar)

    monkeypatch.chdir(workspace)
    monkeypatch.setattr(Trainer, "_consume", signalled)
    run = tmp_path / "run"
    argv = ["run", "configs/digits/kd.yaml", *THREE, "--out", run]
    rc, err = letkd(argv, capsys)
    assert rc == code
    assert (
        f"{word}: in epoch 2/3; {run / 'last.pt'} holds epoch 1/3 (the epoch in progress is discarded): "
        in err
    )
    assert "--resume continues from there" in err
    assert read_checkpoint(run / "last.pt")["epoch"] == 0  # the end of epoch 1, not a mid-epoch snapshot
    monkeypatch.setattr(Trainer, "_consume", consume)
    rc, err = letkd([*argv, "--resume"], capsys)
    assert rc == 0 and f"resuming from {run / 'last.pt'}: epoch 1/3 done, continuing with epoch 2" in err
    resumed = weights(run)
    assert all(torch.equal(resumed[k], v) for k, v in reference.items())  # bit-exact


@pytest.mark.parametrize("signum, code, word", SIGNALS, ids=["G1-SIGINT", "G3-SIGTERM"])
def test_a_signal_while_fitting_says_how_to_go_on(
    signum, code, word, workspace, tmp_path, monkeypatch, capsys
):
    import letkd.supervision.artifacts as artifacts

    fit = artifacts.fit_codebook

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(1)
        return fit(*args, **kwargs)

    monkeypatch.chdir(workspace)
    monkeypatch.setattr(artifacts, "fit_codebook", signalled)
    run, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["run", "configs/digits/letkd1.yaml", *FAST, *TEACHER.split(), f"supervision.cache_dir={cache}"]
    rc, err = letkd([*argv, "--out", run], capsys)
    assert rc == code
    assert f"{word}: while fitting the supervision; no epoch of this run was trained" in err
    assert "run the same command again, without --resume" in err
    assert not run.exists()  # no folder holding only a lock
    assert not [p for p in cache.rglob("*") if p.name.endswith((".lock", ".tmp"))]
    monkeypatch.setattr(artifacts, "fit_codebook", fit)
    rc, err = letkd([*argv, "--out", run, "--resume"], capsys)
    assert rc == 1 and "(no run was started there): run the same command without --resume" in err
    assert letkd([*argv, "--out", run], capsys)[0] == 0


def test_G5_ctrl_c_of_a_sweep_then_the_sweep_again_gives_the_uninterrupted_result(
    reference, workspace, tmp_path
):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    sweep = [
        sys.executable,
        "-m",
        "letkd",
        "sweep",
        "configs/digits/kd.yaml",
        "--seeds",
        "1",
        "--out",
        str(tmp_path / "sw"),
        *THREE,
    ]
    first = subprocess.Popen(
        sweep,
        cwd=workspace,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    last = tmp_path / "sw" / "digits-kd" / "seed0" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.is_file():
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no first epoch"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in the terminal: the sweep and its run
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    again = subprocess.run(sweep, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = weights(last.parent)
    assert all(torch.equal(resumed[k], v) for k, v in reference.items())  # the interruption cost nothing


def test_ctrl_c_in_the_first_epoch_then_the_same_command_starts_afresh(
    reference, workspace, tmp_path, monkeypatch, capsys
):
    from letkd.engine.trainer import Trainer

    consume = Trainer._consume

    def interrupted(self, pending, epoch, names, meter, bar):
        if epoch == 0 and pending[0] == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return consume(self, pending, epoch, names, meter, bar)

    monkeypatch.chdir(workspace)
    monkeypatch.setattr(Trainer, "_consume", interrupted)
    run = tmp_path / "run"
    argv = ["run", "configs/digits/kd.yaml", *THREE, "--out", run]
    rc, err = letkd(argv, capsys)
    assert (
        rc == 130
        and "in epoch 1/3, before any epoch was saved; nothing to resume: run the same command again" in err
    )
    monkeypatch.setattr(Trainer, "_consume", consume)
    rc, err = letkd([*argv, "--resume"], capsys)  # --resume is fine too: the folder holds no trained epoch
    assert rc == 0 and "starting it from the beginning" in err
    resumed = weights(run)
    assert all(torch.equal(resumed[k], v) for k, v in reference.items())
