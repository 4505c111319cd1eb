"""Failures in the middle of a run, in-process: a full disk, a read-only folder (up front and mid-run) —
one clean line, and ``status: failed`` with the reason in summary.json wherever it can still be written —
and overrides given after the options."""

from __future__ import annotations

import errno
import json
import os

import yaml

from bad_inputs.cases import VANILLA
from bad_inputs.conftest import FAST
from letkd.cli import main


def _run(argv, workspace, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.chdir(workspace)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def _one_error(err: str) -> str:
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line


def test_full_disk_during_training_is_one_line_and_recorded(workspace, monkeypatch, capsys):
    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("letkd.checkpoints.atomic_write_bytes", full_disk)  # the checkpoint writer
    code, err = _run(["train", VANILLA, "--out", "out/full", *FAST], workspace, monkeypatch, capsys)
    assert code == 1
    line = _one_error(err)
    assert "cannot write the run folder out/full: No space left on device (out/full/last.pt)" in line
    assert "free some space" in line
    summary = json.loads((workspace / "out" / "full" / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]


def test_folder_turning_read_only_mid_run_is_one_line(workspace, monkeypatch, capsys):
    def read_only(path, text):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr("letkd.engine.rundir.atomic_write_text", read_only)  # config.yaml, summary.json
    code, err = _run(["train", VANILLA, "--out", "out/ro", *FAST], workspace, monkeypatch, capsys)
    assert code == 1
    assert "cannot write the run folder out/ro: Read-only file system" in _one_error(err)
    assert not (workspace / "out" / "ro" / "summary.json").exists()  # could not be written: no crash


def test_read_only_output_folder_is_refused_before_any_work(workspace, monkeypatch, capsys):
    target = workspace / "out" / "readonly"
    target.mkdir()
    real_access = os.access

    def access(path, mode, **kwargs):  # a read-only folder, also for root (who ignores chmod)
        return False if str(path) == "out/readonly" else real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    code, err = _run(["train", VANILLA, "--out", "out/readonly", *FAST], workspace, monkeypatch, capsys)
    assert code == 1
    assert "cannot write the run folder out/readonly: the folder is read-only" in _one_error(err)
    assert list(target.iterdir()) == []


def test_overrides_after_the_options(workspace, monkeypatch, capsys):
    fast = [o for o in FAST if not o.startswith("train.epochs=")]  # the resnet8 config says 5 epochs
    argv = ["run", VANILLA, *fast, "--out", "out/after", "train.epochs=1", "seed=7"]
    code, err = _run(argv, workspace, monkeypatch, capsys)
    assert code == 0, err
    run = workspace / "out" / "after"
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 7


def test_one_epoch_numbering_on_the_screen(workspace, monkeypatch, capsys):
    import re

    fast = [o for o in FAST if not o.startswith("train.epochs=")]
    monkeypatch.chdir(workspace)
    capsys.readouterr()
    assert main(["train", VANILLA, "--out", "out/numbering", *fast, "train.epochs=3"]) == 0
    out, err = capsys.readouterr()
    tops = {int(m[1]): m[2] for m in re.finditer(r"^epoch (\d+)/3 .*test top-1 ([\d.]+)", err, re.M)}
    final = re.search(r"best top-1 ([\d.]+)% \(epoch (\d+)/3\)", out)
    assert sorted(tops) == [1, 2, 3] and final, (out, err)
    best_epoch = min(e for e, top in tops.items() if top == final[1])  # the first epoch that reached it
    assert int(final[2]) == best_epoch  # the final line counts epochs as the progress lines do
