"""Supervision fits across processes: a second `letkd fit` of the same entry waits and finds it cached;
`letkd fit` killed with SIGKILL while extracting or clustering loses nothing and the next run recovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from letkd.cli import main
from letkd.supervision import load_artifact
from letkd.supervision.extract import open_checked
from letkd.supervision.lock import EntryLock

ROOT = Path(__file__).resolve().parents[1]
K = 16
LAYERS = [{"kind": "codebook", "student_tap": "penultimate", "teacher_tap": "penultimate",
           "num_templates": K}]


def write_config(folder: Path, cache: Path, train_subset: int = 300) -> Path:
    cfg = {
        "seed": 3,
        "data": {"name": "digits", "train_subset": train_subset, "num_workers": 0},
        "model": {"name": "resnet8"},
        "teacher": {"name": "resnet8"},
        "method": {"name": "letkd", "params": {"layers": LAYERS}},
        "supervision": {"cache_dir": str(cache), "kmeans_iters": 10, "extract_batch_size": 20},
        "train": {"device": "cpu"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_fit(config: Path) -> tuple[subprocess.Popen, list[str], list[str]]:
    """`letkd fit CONFIG` in a new process, with threads collecting its stdout and stderr lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "letkd", "fit", str(config), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out: list[str] = []
    err: list[str] = []
    for stream, lines in ((proc.stdout, out), (proc.stderr, err)):
        threading.Thread(target=lambda s=stream, ls=lines: ls.extend(s), daemon=True).start()
    return proc, out, err


def wait_for(condition, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"letkd fit ended (status {proc.returncode}) before the awaited moment")
        time.sleep(0.005)


def assert_whole(cache: Path) -> None:
    """Exactly one artefact, which verifies; complete rows; no temporary or lock file anywhere."""
    (artefact,) = cache.glob("*.safetensors")
    module, meta = load_artifact(artefact)
    assert module.centers.shape == (K, 64) and int(module.cluster_sizes.sum()) == meta["num_rows"]
    (rows,) = (cache / "rows").iterdir()
    assert open_checked(rows).num_rows == meta["num_rows"]
    assert not [p for p in cache.rglob("*") if p.name.endswith((".tmp", ".lock")) or ".corrupt-" in p.name]


@pytest.fixture(scope="module")
def artefact_name(tmp_path_factory) -> str:
    """The file name of the config's codebook entry, from a clean fit (the name does not depend on the
    cache folder)."""
    folder = tmp_path_factory.mktemp("names")
    assert main(["fit", str(write_config(folder, folder / "cache")), "--no-progress"]) == 0
    (path,) = (folder / "cache").glob("*.safetensors")
    return path.name


@pytest.mark.slow
def test_a_second_process_waits_then_finds_the_artefact_cached(tmp_path, artefact_name):
    cache = tmp_path / "cache"
    config = write_config(tmp_path, cache)
    held = EntryLock((cache / artefact_name).with_suffix(".lock"), "test").acquire()
    runs = [start_fit(config), start_fit(config)]
    waiting = f"waiting for another process fitting codebook artefact {artefact_name} (pid {os.getpid()});"
    try:
        wait_for(lambda: all(any(waiting in line for line in err) for _, _, err in runs))
    finally:
        held.release()
    for proc, _, _ in runs:
        assert proc.wait(120) == 0
    time.sleep(0.1)  # the reader threads drain the pipes
    outs = sorted(" ".join(out) for _, out, _ in runs)
    assert "cached" in outs[0] and "fitted" in outs[1], outs  # one fit, then the other reuses it
    assert_whole(cache)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["extraction", "K-means"])
def test_kill_during_fit_loses_nothing(tmp_path, artefact_name, phase, capsys):
    cache = tmp_path / "cache"
    config = write_config(tmp_path, cache)
    rows = cache / "rows"

    def extracting() -> bool:
        return rows.is_dir() and any(p.name.endswith(".tmp") for p in rows.iterdir())

    def clustering() -> bool:
        return any(rows.glob("*/meta.json")) and not (cache / artefact_name).exists()

    proc, _, _ = start_fit(config)
    wait_for(extracting if phase == "extraction" else clustering, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    left = sorted(p.name for p in cache.rglob("*") if p.name.endswith((".tmp", ".lock")))
    assert left, "killed while holding the entry: its lock file (and temp files) remain"
    assert not (cache / artefact_name).exists()

    assert main(["fit", str(config), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "fitted" in captured.out and "Traceback" not in captured.err
    if phase == "extraction":
        assert "removed 1 stale temporary file(s) left by an interrupted fit" in captured.err
    assert_whole(cache)
    assert main(["fit", str(config), "--no-progress"]) == 0
    assert "cached" in capsys.readouterr().out
