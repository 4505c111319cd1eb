"""The runs of a sweep die with it: ``letkd sweep`` processes (three at once, one run each) get Ctrl-C (G5),
SIGTERM (G6) and kill -9 (S1) while their run trains; each run process must be gone soon after, with the
sweep's exit status and message, and the interrupted run resumable."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bad_inputs.conftest import ROOT
from letkd.engine.rundir import lock_holder

#: a run that trains until it is stopped: many one-step epochs on a few images
ENDLESS = ["train.epochs=1000", "train.max_steps_per_epoch=1", "data.train_subset=32", "data.batch_size=16",
           "data.test_subset=16", "train.progress=false", "train.tensorboard=false"]  # fmt: skip
CASES = {"G5": signal.SIGINT, "G6": signal.SIGTERM, "S1": signal.SIGKILL}


def _wait(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # a zombie has stopped running


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_runs_of_a_sweep_die_with_it(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    config = str(ROOT / "configs" / "digits" / "resnet8.yaml")
    sweeps = {}
    for case in CASES:
        cmd = [
            sys.executable,
            "-m",
            "letkd",
            "sweep",
            config,
            "--seeds",
            "1",
            "--out",
            str(tmp_path / case),
            *ENDLESS,
        ]
        sweeps[case] = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)  # fmt: skip
    folders = {case: tmp_path / case / "digits-resnet8" / "seed0" for case in CASES}
    try:
        for case, folder in folders.items():
            _wait(lambda f=folder: (f / "last.pt").is_file() and lock_holder(f), f"{case}'s run", 240)
        runs = {case: int(lock_holder(folder)) for case, folder in folders.items()}
        for case, signum in CASES.items():
            sweeps[case].send_signal(signum)
        outputs = {case: proc.communicate(timeout=120)[0] for case, proc in sweeps.items()}
    finally:
        for proc in sweeps.values():
            if proc.poll() is None:
                proc.kill()
    for case, pid in runs.items():
        _wait(lambda p=pid: _gone(p), f"the run of {case} (pid {pid}) to end", 30)
        assert lock_holder(folders[case]) is None
    assert sweeps["S1"].returncode == -signal.SIGKILL
    assert sweeps["G6"].returncode == 128 + signal.SIGTERM, outputs["G6"]
    assert "stopping: SIGTERM received; 1 run(s) in progress stopped" in outputs["G6"]
    stopped = r"stopped digits-resnet8 seed0: .*(killed by|stopped by) SIGTERM"
    assert re.search(stopped, outputs["G6"]), outputs["G6"]
    assert sweeps["G5"].returncode == 130, outputs["G5"]
    assert "interrupted: the 1 run(s) in progress save their last.pt" in outputs["G5"]
    assert json.loads((folders["G5"] / "summary.json").read_text())["status"] == "interrupted"
    for case in CASES:
        assert "Traceback" not in outputs[case], outputs[case]
        assert (folders[case] / "last.pt").is_file()  # each resumes when its sweep runs again
