"""The GPU check in one command: CUDA tests, the claim on Fashion-MNIST, the speed benchmark, one summary.

Stages and their share of ``--budget-s`` (each with a hard timeout, so the command always ends and always
writes its summary):

- ``tests``  — ``pytest tests/test_cuda.py`` (runs beside the claim; correctness only), 55 %;
- ``claim``  — :mod:`benchmarks.gpu.claim` (several training processes on the GPU), 62 %;
- ``speed``  — :mod:`benchmarks.gpu.speed`, alone on the GPU after the other two, what is left (≈ 35 %).

Everything goes under ``--out`` (default ``$OUT``, else ``runs/gpu``): ``logs/<stage>.log``,
``cuda_tests.xml``, ``claim/`` (runs, configs, report), ``speed/`` and ``summary.md``, which is also printed.
``--dry-run`` runs the same stages on the CPU with tiny sizes (the CUDA tests are then skipped with "needs
CUDA"); ``tests/test_gpu_script.py`` runs it. Run: ``bash benchmarks/gpu/run.sh`` (installs what is
missing from the carried wheels first) or ``python -m benchmarks.gpu.run --budget-s 330``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARES = {"tests": 0.55, "claim": 0.62}


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, output to ``log``."""
    fh = open(log, "w")  # noqa: SIM115 (the child keeps it; closed when the parent exits)
    fh.write("$ " + " ".join(cmd) + "\n")
    fh.flush()
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )


def finish(proc: subprocess.Popen, deadline: float) -> int | str:
    """Exit code of ``proc``, or ``"timeout"`` after SIGINT / SIGKILL of its group at ``deadline``."""
    try:
        return proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return "timeout"


def count_tests(xml_path: Path) -> str:
    """``passed / failed / errors / skipped`` from a JUnit XML file written by pytest."""
    if not xml_path.is_file():
        return "no result (pytest wrote no report)"
    suite = ET.parse(xml_path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failed, errors, skipped = (
        int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")
    )
    reasons = {s.get("message", "") for s in suite.iter("skipped")}
    why = f" (skip reasons: {'; '.join(sorted(reasons))})" if reasons else ""
    passed = total - failed - errors - skipped
    return f"{passed} passed, {failed} failed, {errors} errors, {skipped} skipped{why}"


def read(path: Path, fallback: str) -> str:
    return path.read_text() if path.is_file() else fallback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=330.0, help="seconds for all stages together")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu", help="output folder")
    parser.add_argument("--stages", default="tests,claim,speed", help="comma-separated subset of the stages")
    parser.add_argument("--seeds", type=int, default=1, help="claim: seeds per method")
    parser.add_argument("--data", default=None, help="claim: folder holding fashion-mnist/*-ubyte.gz")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the code paths")
    args = parser.parse_args(argv)
    stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    unknown = stages - {"tests", "claim", "speed"}
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}; choose from tests, claim, speed")
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    end = t0 + args.budget_s
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUBLAS_WORKSPACE_CONFIG=":4096:8")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    dry = ["--dry-run"] if args.dry_run else []
    py = sys.executable
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    if "tests" in stages:
        cmd = [
            py,
            "-m",
            "pytest",
            "-q",
            "tests/test_cuda.py",
            "-p",
            "no:cacheprovider",
            f"--junitxml={out}/cuda_tests.xml",
        ]
        running["tests"] = (start(cmd, out / "logs" / "tests.log", env), t0 + SHARES["tests"] * args.budget_s)
    if "claim" in stages:
        budget = SHARES["claim"] * args.budget_s
        cmd = [
            py,
            "-m",
            "benchmarks.gpu.claim",
            "--budget-s",
            f"{budget - 10:.0f}",
            "--out",
            str(out / "claim"),
            "--seeds",
            str(args.seeds),
            *dry,
        ] + (["--data", args.data] if args.data else [])
        running["claim"] = (start(cmd, out / "logs" / "claim.log", env), t0 + budget)
    codes = {name: finish(proc, deadline) for name, (proc, deadline) in running.items()}
    if "speed" in stages:
        budget = max(end - time.monotonic(), 30.0)
        cmd = [
            py,
            "-m",
            "benchmarks.gpu.speed",
            "--budget-s",
            f"{budget - 10:.0f}",
            "--out",
            str(out / "speed"),
            *dry,
        ]
        codes["speed"] = finish(start(cmd, out / "logs" / "speed.log", env), time.monotonic() + budget)
    lines = [
        f"# GPU check{' (DRY RUN: CPU, tiny sizes — no measurement)' if args.dry_run else ''}",
        "",
        f"total {time.monotonic() - t0:.0f} s of a {args.budget_s:.0f} s budget; exit codes {codes}; "
        f"logs in {out / 'logs'}",
        "",
    ]
    if "tests" in stages:
        lines += ["## CUDA tests (tests/test_cuda.py)", "", count_tests(out / "cuda_tests.xml"), ""]
    if "speed" in stages:
        lines += ["## Speed", "", read(out / "speed" / "speed.md", "no result (see logs/speed.log)"), ""]
    if "claim" in stages:
        lines += [
            "## Claim (Fashion-MNIST)",
            "",
            read(out / "claim" / "claim.md", "no result (see logs/claim.log)"),
        ]
    summary = "\n".join(lines) + "\n"
    tmp = out / ".summary.md.tmp"
    tmp.write_text(summary)
    tmp.replace(out / "summary.md")
    print(summary)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
