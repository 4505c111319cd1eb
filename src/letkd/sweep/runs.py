"""One grid point as a job: skip it (complete), resume it (``last.pt``) or start it afresh, and say in one
line how it ended — the outcome of a finished run, or the cause of a failed one with its log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from letkd.engine.rundir import LAST, METRICS, SUMMARY
from letkd.sweep.grid import SweepRun

#: the longest cause printed on the console (the log has all of it)
_CAUSE_CHARS = 300


class RunFailed(RuntimeError):
    """A run ended without completing; ``cause`` is its one-line reason, ``log`` where its output went."""

    def __init__(self, run: SweepRun, cause: str, log: str | None = None) -> None:
        self.cause, self.log = cause, log
        super().__init__(f"{run.title}: {cause}" + (f"; log: {log}" if log else ""))


def read_summary(folder: str | Path) -> dict[str, Any]:
    """The run's ``summary.json`` ({} when missing or unreadable)."""
    try:
        data = json.loads((Path(folder) / SUMMARY).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def run_state(folder: str | Path, epochs: int | None = None) -> str:
    """``"completed"`` (summary.json says so, for ``epochs`` epochs when given), ``"resume"`` (a ``last.pt``
    to continue from) or ``"new"``. A complete run asked for more epochs is resumed: the sweep's checks let
    through only a run whose trained epochs are those the longer run would have trained."""
    folder = Path(folder)
    summary = read_summary(folder)
    if summary.get("status") == "completed" and (epochs is None or summary.get("epochs") == epochs):
        return "completed"
    return "resume" if (folder / LAST).is_file() else "new"


def outcome(folder: str | Path) -> str:
    """One line on a finished run: status, best and last test top-1."""
    summary = read_summary(folder)
    if not summary:
        return "no summary.json"
    text = str(summary.get("status", "?"))
    for key in ("best_top1", "last_top1"):
        if isinstance(summary.get(key), (int, float)):
            text += f", {key.split('_')[0]} top-1 {summary[key]:.2f}%"
    if summary.get("error"):
        text += f" ({summary['error']})"
    return text


def failure_cause(output: str, code: int) -> str:
    """The one-line cause of a failed ``letkd run`` from its output: its ``error:`` line, else the last line
    (a traceback's exception), with how the process ended."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    if code < 0:
        try:
            ended = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            ended = f"killed by signal {-code}"
    else:  # letkd run exits 143 after SIGTERM and 130 after Ctrl-C, having saved where it stopped
        signal_name = {128 + signal.SIGTERM: "SIGTERM", 128 + signal.SIGINT: "SIGINT"}.get(code)
        ended = f"exit status {code}" + (f", stopped by {signal_name}" if signal_name else "")
    if errors:
        cause = errors[-1]
    elif code < 0 or not lines:  # killed: its last line is whatever it was doing
        return ended
    else:
        cause = lines[-1]
    if len(cause) > _CAUSE_CHARS:
        cause = cause[: _CAUSE_CHARS - 3] + "..."
    return f"{cause} ({ended})"


@dataclass
class ExecuteRun:
    """Picklable job body: run one grid point unless it is complete; returns ``(state before, outcome)`` and
    raises :class:`RunFailed` when the run does not complete.

    ``log`` sends the command's output to that file (else it is inherited, as in a SLURM job's log).
    ``in_process`` runs the command line with :func:`letkd.cli.main` in this process instead of a new
    Python (a SLURM job is a process of its own already; saves one interpreter start per run). ``extra``:
    overrides added for this execution only (runtime settings such as ``data.num_workers``). ``on_start``
    receives the started process (local executor: so that a stopping sweep can signal it).
    """

    run: SweepRun
    log: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    in_process: bool = False
    extra: tuple[str, ...] = ()
    on_start: Callable[[subprocess.Popen], None] | None = None

    def __call__(self) -> tuple[str, str]:
        state = run_state(self.run.folder, self.run.epochs)
        if state == "completed":
            return state, outcome(self.run.folder)
        folder = Path(self.run.folder)
        if state == "new":  # a start that died before its first checkpoint: its history is stale
            for stale in (METRICS, SUMMARY):
                (folder / stale).unlink(missing_ok=True)
        resume = state == "resume"
        if self.in_process:
            code, output = self._main(self.run.letkd_args(resume, self.extra)), ""
        else:
            args = self.run.letkd_args(resume, self.extra)
            code, output = self._spawn(self.run.command(resume, self.extra), args)
        result = outcome(folder)
        if code or run_state(folder, self.run.epochs) != "completed":
            cause = failure_cause(output, code) if code else f"{result} (exit status 0)"
            raise RunFailed(self.run, cause, self.log)
        return state, result

    def _spawn(self, cmd: Sequence[str], args: Sequence[str]) -> tuple[int, str]:
        """Run ``cmd`` in a session of its own (the sweep signals it and its data loaders as one group);
        returns its exit status and, with a log, what it wrote there."""
        env = {**os.environ, **self.env, "PYTHONPATH": _pythonpath()}
        if not self.log:
            return self._wait(subprocess.Popen(cmd, cwd=self.run.cwd, env=env, start_new_session=True)), ""
        try:
            with open(self.log, "a") as fh:
                fh.write(f"$ python -m letkd {' '.join(args)}\n")
                fh.flush()
                start = fh.tell()
                proc = subprocess.Popen(
                    cmd,
                    cwd=self.run.cwd,
                    env=env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                code = self._wait(proc)
            with open(self.log, errors="replace") as fh:
                fh.seek(start)
                return code, fh.read()
        except OSError as exc:
            raise RunFailed(self.run, f"cannot write its log: {exc.strerror or exc}: {self.log}") from None

    def _wait(self, proc: subprocess.Popen) -> int:
        if self.on_start is not None:
            self.on_start(proc)
        return proc.wait()

    def checkpoint(self) -> Any:
        """Called by submitit on a SLURM time-out or preemption: requeue the job, which then resumes from
        the run's ``last.pt``."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)

    def _main(self, argv: list[str]) -> int:
        from letkd.cli import main

        old = os.getcwd()
        os.chdir(self.run.cwd)
        try:
            return main(argv)
        finally:
            os.chdir(old)


def _pythonpath() -> str:
    """PYTHONPATH for a run's process: this ``letkd``'s import root first, so it runs the same code."""
    import letkd

    root = str(Path(letkd.__file__).resolve().parents[1])
    return os.pathsep.join([root, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)])
