"""The local executor: the grid's runs on this machine, ``runs_per_gpu`` at a time on each GPU (or on the
CPU), each a process of its own that dies with the sweep.

Each run is a session (process group) of its own, so Ctrl-C or SIGTERM reaches the sweep alone; the sweep
passes the signal on to every run in progress and waits for them (Ctrl-C: they save ``last.pt``;
SIGTERM/SIGHUP: they stop and resume from their last end-of-epoch checkpoint). A sweep killed outright
(``kill -9``) takes its runs with it: they get SIGTERM as their parent dies (:mod:`letkd.sweep.child`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from letkd.sweep.grid import SweepRun
from letkd.sweep.runs import ExecuteRun, RunFailed, outcome, run_state

Printer = Callable[[str], None]
#: seconds the runs get to stop after the sweep passed a signal on, before they are killed
STOP_GRACE = 60.0


class SweepStopped(Exception):
    """The sweep received SIGTERM or SIGHUP; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    return [str(i) for i in range(cuda_device_count())]


def cuda_device_count() -> int:
    """CUDA devices torch sees here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def waves(grid: Sequence[SweepRun]) -> list[list[SweepRun]]:
    """Split the grid so that of the runs sharing a teacher still to be trained, only the first is in the
    first wave (it trains the teacher; the others reuse it)."""
    first, later, seen = [], [], set()
    for run in grid:
        if run.teacher_key is not None and run.teacher_key in seen:
            later.append(run)
        else:
            seen.add(run.teacher_key)
            first.append(run)
    return [w for w in (first, later) if w]


def shared_workers(workers: int | None, runs_per_gpu: int) -> tuple[str, ...]:
    """The override giving each of ``runs_per_gpu`` runs sharing a GPU its part of the data-loader workers
    one run would use (the config's ``data.num_workers``, else the count chosen from the CPUs)."""
    if runs_per_gpu <= 1:
        return ()
    from letkd.engine.loaders import auto_num_workers

    total = auto_num_workers() if workers is None else workers
    return (f"data.num_workers={max(1, total // runs_per_gpu) if total else 0}",)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`SweepStopped` in the main thread for the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SweepStopped(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class _Children:
    """The processes of the runs in progress, to pass a signal on to. Once a signal was passed on, a run
    started afterwards (its worker was already on its way) gets it as soon as it is added."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen] = set()
        self.stop_signal: int | None = None

    def add(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.add(proc)
            late = self.stop_signal
        if late is not None:
            _signal_group(proc, late)

    def signal(self, signum: int) -> int:
        """Send ``signum`` to every live run's process group; returns how many there were."""
        with self.lock:  # returncode: set by the thread waiting for it (poll() may not see it meanwhile)
            self.stop_signal = signum
            live = [p for p in self.procs if p.returncode is None]
        for proc in live:
            _signal_group(proc, signum)
        return len(live)


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def run_local(
    grid: Sequence[SweepRun],
    gpus: Sequence[str] | None = None,
    echo: Printer = print,
    runs_per_gpu: int = 1,
) -> dict[str, int]:
    """Run the grid here: ``runs_per_gpu`` processes on each GPU of ``gpus`` (default: the visible ones),
    each pinned with ``CUDA_VISIBLE_DEVICES``, or ``runs_per_gpu`` at a time without GPUs. Returns the
    counts ``{"completed", "skipped", "failed", "not started"}``; a failed run is reported with its cause and
    log, and the others go on. On Ctrl-C (re-raised) or :class:`SweepStopped` the runs in progress get the
    signal and are waited for."""
    gpus = list(visible_gpus() if gpus is None else gpus)
    slots = [g for g in (gpus or [None]) for _ in range(max(1, runs_per_gpu))]
    counts = {"completed": 0, "skipped": 0, "failed": 0, "not started": 0}
    lock = threading.Lock()
    children = _Children()
    stopping = threading.Event()

    def say(line: str, key: str | None = None) -> None:
        with lock:
            echo(line)
            if key:
                counts[key] += 1

    def work(run: SweepRun, gpu: str | None) -> None:
        start = time.monotonic()
        try:
            state = run_state(run.folder, run.epochs)
            if state == "completed":
                say(f"skip   {run.title}: {outcome(run.folder)}", "skipped")
                return
            where = f" on GPU {gpu}" if gpu is not None else ""
            say(f"start  {run.title}{' (resuming)' if state == 'resume' else ''}{where}")
            env = {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}
            job = ExecuteRun(run, log=str(run.log), env=env, extra=shared_workers(run.workers, runs_per_gpu),
                             on_start=children.add)  # fmt: skip
            _, result = job()
            say(f"done   {run.title}: {result} [{time.monotonic() - start:.0f} s]", "completed")
        except RunFailed as exc:
            word = "stopped" if stopping.is_set() else "FAILED"
            log = f"; log: {exc.log}" if exc.log else ""
            say(f"{word} {run.title}: {exc.cause}{log} [{time.monotonic() - start:.0f} s]", "failed")
        except Exception as exc:  # noqa: BLE001 (never a silent worker: any failure is the run's)
            from letkd.cli import error_message

            say(f"FAILED {run.title}: {error_message(exc)} [{time.monotonic() - start:.0f} s]", "failed")

    def worker(queue: list[SweepRun], gpu: str | None) -> None:
        try:
            while not stopping.is_set():
                with lock:
                    if not queue:
                        return
                    run = queue.pop(0)
                work(run, gpu)
        finally:
            with lock:
                active[0] -= 1

    queue: list[SweepRun] = []
    active = [0]
    try:
        with _stop_signals():
            for wave in waves(grid):
                queue[:] = wave
                active[0] = len(slots)
                for gpu in slots:
                    threading.Thread(target=worker, args=(queue, gpu), daemon=True).start()
                _wait_for(lambda: active[0] == 0, stopping, children, echo)
    finally:
        counts["not started"] = len(grid) - sum(counts.values())
    return counts


def _wait_for(
    done: Callable[[], bool], stopping: threading.Event, children: _Children, echo: Printer
) -> None:
    """Wait until ``done()``; on Ctrl-C or SIGTERM/SIGHUP pass the signal on to the runs in progress, wait
    for them (``STOP_GRACE`` seconds, or until a second Ctrl-C; then they are killed) and re-raise.

    Polls with ``time.sleep`` rather than ``Thread.join``: a join interrupted by a signal may not wait again.
    """
    try:
        while not done():
            time.sleep(0.1)
    except (KeyboardInterrupt, SweepStopped) as exc:
        stopping.set()
        signum = exc.signum if isinstance(exc, SweepStopped) else signal.SIGINT
        live = children.signal(signum)
        if isinstance(exc, SweepStopped):
            echo(f"stopping: {exc} received; {live} run(s) in progress stopped (each resumes from its last "
                 "end-of-epoch checkpoint when the sweep runs again)")  # fmt: skip
        else:
            echo(
                f"interrupted: the {live} run(s) in progress save their last.pt; "
                "run the sweep again to resume"
            )
        deadline = time.monotonic() + STOP_GRACE
        try:
            while not done() and time.monotonic() < deadline:
                time.sleep(0.1)
        except (KeyboardInterrupt, SweepStopped):
            pass
        if children.signal(signal.SIGKILL):
            echo("killed the runs that did not stop in time")
        while not done():
            time.sleep(0.1)
        raise
