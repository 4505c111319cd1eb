"""The GPU check's script in its CPU dry run (so it cannot rot), its stage timeout and its test counting."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_run_module():
    """benchmarks/gpu/run.py (the benchmarks folder is not an installed package)."""
    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "benchmarks" / "gpu" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_module = _load_run_module()
finish, start, count_tests = run_module.finish, run_module.start, run_module.count_tests


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dry_run_writes_every_section_of_the_summary(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("LETKD_TEST_DEVICE", None)
    cmd = [sys.executable, "-m", "benchmarks.gpu.run", "--dry-run", "--budget-s", "840"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=880)
    summary = (out / "summary.md").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary in done.stdout  # printed as well as written
    assert "DRY RUN" in summary
    # CUDA tests: counted from pytest's JUnit report; without a GPU every one is skipped, saying why
    tests = summary.split("## CUDA tests")[1].split("##")[0]
    if not os.environ.get("CUDA_VISIBLE_DEVICES") and "needs CUDA" in tests:
        assert tests.split("passed")[0].strip().endswith("0") and "0 failed" in tests
    # speed: every method measured in each setting of the dry run, packing and the epoch measured
    speed = summary.split("## Speed")[1].split("## Claim")[0]
    for method in ("vanilla", "kd", "quest", "letkd1", "letkd2"):
        assert speed.count(f"| {method} ") >= 2, method
    assert "not measured" not in speed
    # claim: the dry run's three students completed their epoch and the report was written
    claim = summary.split("## Claim")[1]
    for label in ("vanilla-s0", "quest-s0", "letkd2_w0.1-s0"):
        row = next(line for line in claim.splitlines() if line.startswith(f"| {label} "))
        assert "| completed | 1 |" in row, row
    assert (out / "claim" / "report" / "report.md").is_file() or "letkd report exit code: 1" in claim
    assert (out / "claim" / "configs" / "letkd2_w0.1-s0.yaml").read_text().count('"weight": 0.1') == 2


def test_a_stage_past_its_deadline_is_stopped(tmp_path):
    proc = start(
        [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "sleep.log", dict(os.environ)
    )
    t0 = time.monotonic()
    assert finish(proc, time.monotonic() + 1.0) == "timeout"
    assert time.monotonic() - t0 < 20 and proc.poll() is not None
    quick = start([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "quick.log", dict(os.environ))
    assert finish(quick, time.monotonic() + 60) == 3


def test_counts_from_junit_xml(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2">'
        '<testcase name="a"><skipped message="needs CUDA"/></testcase>'
        '<testcase name="b"><skipped message="needs CUDA"/></testcase></testsuite></testsuites>'
    )
    assert count_tests(xml) == "2 passed, 1 failed, 0 errors, 2 skipped (skip reasons: needs CUDA)"
    assert "no result" in count_tests(tmp_path / "missing.xml")
