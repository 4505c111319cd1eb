"""Sweeps: every config × seed as an ordinary run folder ``DIR/<config name>/seed<s>``.

Each run is ``python -m letkd run CONFIG --out FOLDER [--resume] [overrides] seed=S`` (the same code path
as ``letkd run``) in a subprocess, started from the working directory of the sweep so that relative paths
in the configs (teacher checkpoints, ``teacher.train_config``, data roots) mean the same thing. Whether a
run is skipped (``summary.json`` says completed), resumed (``last.pt`` present) or started afresh is
decided when the run starts, so a resubmitted or restarted sweep picks up where it stopped.

Executors: :func:`run_local` (one run after another, or one per visible GPU in parallel with
``CUDA_VISIBLE_DEVICES`` pinned per process) and :func:`submit_slurm` (submitit array jobs). Runs whose
teacher is still to be trained from ``teacher.train_config`` are ordered so that the first of them trains
it while the others wait (local: a second wave; SLURM: a second array depending on the first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from letkd.engine.rundir import LAST, METRICS, SUMMARY
from letkd.utils import atomic_write_text

MANIFEST = "sweep.json"
LOGS = "logs"
SUBMITIT = "submitit"


class SweepError(ValueError):
    """The sweep cannot start (missing config, bad override, unwritable folder, clashing names)."""


@dataclass(frozen=True)
class SweepRun:
    """One (config, seed) of the grid; ``folder`` is its run folder, ``cwd`` where the command runs."""

    config: str
    name: str
    seed: int
    folder: str
    overrides: tuple[str, ...]
    cwd: str
    teacher_key: str | None = None  # teacher.train_config of a teacher trained on first use, else None

    @property
    def title(self) -> str:
        """``<config name> seed<s>``, as printed in progress lines."""
        return f"{self.name} seed{self.seed}"

    @property
    def log(self) -> Path:
        """Where the local executor writes the run's stdout and stderr."""
        return Path(self.folder).parent.parent / LOGS / f"{self.name}-seed{self.seed}.log"

    def command(self, resume: bool) -> list[str]:
        """The ``letkd run`` command line of this run."""
        resume_flag = ["--resume"] if resume else ["--overwrite"]  # not complete, nothing to resume: restart
        return [sys.executable, "-m", "letkd", "run", self.config, *self.overrides, "--out", self.folder,
                *resume_flag]  # fmt: skip


def run_state(folder: str | Path) -> str:
    """``"completed"`` (summary.json says so), ``"resume"`` (a ``last.pt`` to continue from) or ``"new"``."""
    folder = Path(folder)
    summary = read_summary(folder)
    if summary.get("status") == "completed":
        return "completed"
    return "resume" if (folder / LAST).is_file() else "new"


def read_summary(folder: str | Path) -> dict[str, Any]:
    """The run's ``summary.json`` ({} when missing or unreadable)."""
    try:
        data = json.loads((Path(folder) / SUMMARY).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


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


def build_grid(
    configs: Sequence[str | Path], seeds: Sequence[int], out_dir: str | Path, overrides: Sequence[str] = ()
) -> list[SweepRun]:
    """Validate every config with its overrides (and each seed) and return the grid; raises
    :class:`SweepError` listing every problem before anything is started."""
    from letkd.config import ConfigError, load_config
    from letkd.methods import get_method

    if not configs:
        raise SweepError("no config given; pass one or more YAML files")
    if not seeds:
        raise SweepError("no seeds; pass --seeds N (seeds 0..N-1) or --seed-list 0,3,7")
    out, cwd = Path(out_dir).resolve(), Path.cwd()
    problems: list[str] = []
    grid: list[SweepRun] = []
    names: dict[str, str] = {}
    for config in map(str, configs):
        try:
            cfg = load_config(config, [*overrides, f"seed={seeds[0]}"])
            get_method(cfg.method.name).parse_params(cfg.method.params)
        except (ConfigError, ValueError, KeyError) as exc:
            problems.append(f"{config}: {exc}")
            continue
        name = cfg.name or Path(config).stem
        if name in names:
            problems.append(f"{config} and {names[name]} have the same name {name!r}; set name=... in one")
            continue
        names[name] = config
        key = cfg.teacher.train_config if cfg.teacher and not cfg.teacher.checkpoint else None
        for seed in seeds:
            grid.append(SweepRun(
                config=str(Path(config).resolve()), name=name, seed=int(seed),
                folder=str(out / name / f"seed{seed}"), overrides=(*overrides, f"seed={seed}"),
                cwd=str(cwd), teacher_key=key,
            ))  # fmt: skip
    if problems:
        raise SweepError("invalid sweep:\n  " + "\n  ".join(problems))
    return grid


def prepare_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and its log folder) and check it is writable; raises :class:`SweepError`."""
    out = Path(out_dir)
    try:
        (out / LOGS).mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SweepError(
            f"cannot write to the sweep folder {out}: {exc.strerror or exc}; pass --out DIR"
        ) from None
    return out


def write_manifest(out_dir: str | Path, grid: Sequence[SweepRun], settings: dict[str, Any]) -> Path:
    """``sweep.json``: the configs, seeds and every run's folder (merged with the runs an earlier call put
    in the same folder), and this call's settings."""
    path = Path(out_dir) / MANIFEST
    try:
        earlier = json.loads(path.read_text()).get("runs", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        earlier = []
    new = [{**asdict(r), "folder": os.path.relpath(r.folder, Path(out_dir).resolve())} for r in grid]
    runs = list({r["folder"]: r for r in [*earlier, *new] if isinstance(r, dict) and "folder" in r}.values())
    data = {
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "configs": list(dict.fromkeys(r.get("config") for r in runs)),
        "seeds": sorted({r.get("seed") for r in runs if isinstance(r.get("seed"), int)}),
        "settings": settings,
        "runs": runs,
    }
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


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


@dataclass
class ExecuteRun:
    """Picklable job body: run one grid point unless it is complete; returns ``(state before, outcome)``.

    ``log`` sends the command's output to that file (else it is inherited, as in a SLURM job's log).
    ``in_process`` runs the command line with :func:`letkd.cli.main` in this process instead of a new
    Python (a SLURM job is a process of its own already; saves one interpreter start per run).
    """

    run: SweepRun
    log: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    in_process: bool = False

    def __call__(self) -> tuple[str, str]:
        state = run_state(self.run.folder)
        if state == "completed":
            return state, outcome(self.run.folder)
        folder = Path(self.run.folder)
        if state == "new":  # a start that died before its first checkpoint: its history is stale
            for stale in (METRICS, SUMMARY):
                (folder / stale).unlink(missing_ok=True)
        env = {**os.environ, **self.env, "PYTHONPATH": _pythonpath()}
        cmd = self.run.command(resume=state == "resume")
        if self.in_process:
            code = self._main(cmd[3:])
        elif self.log:
            with open(self.log, "a") as fh:
                fh.write(f"$ {' '.join(cmd)}\n")
                fh.flush()
                code = subprocess.run(
                    cmd, cwd=self.run.cwd, env=env, stdout=fh, stderr=subprocess.STDOUT
                ).returncode
        else:
            code = subprocess.run(cmd, cwd=self.run.cwd, env=env).returncode
        result = outcome(folder)
        if code != 0 and read_summary(folder).get("status") != "completed":
            where = f"; log: {self.log}" if self.log else ""
            raise RuntimeError(f"{self.run.title}: letkd run exited with status {code} ({result}){where}")
        return state, result

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


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


Printer = Callable[[str], None]


def run_local(grid: Sequence[SweepRun], gpus: Sequence[str] | None = None, echo: Printer = print) -> dict:
    """Run the grid here: one run after another (no GPU), or one process per GPU in ``gpus`` (default: the
    visible ones), each pinned with ``CUDA_VISIBLE_DEVICES``. Returns ``{"completed", "skipped", "failed"}``
    counts. A failed run is reported and the others go on."""
    gpus = list(visible_gpus() if gpus is None else gpus)
    slots = gpus or [None]
    counts = {"completed": 0, "skipped": 0, "failed": 0}
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            echo(line)

    def work(run: SweepRun, gpu: str | None) -> None:
        state = run_state(run.folder)
        if state == "completed":
            say(f"skip   {run.title}: {outcome(run.folder)}")
            with lock:
                counts["skipped"] += 1
            return
        where = f" on GPU {gpu}" if gpu is not None else ""
        say(f"start  {run.title}{' (resuming)' if state == 'resume' else ''}{where}")
        start = time.monotonic()
        env = {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}
        try:
            _, result = ExecuteRun(run, log=str(run.log), env=env)()
            key, word = "completed", "done  "
        except RuntimeError as exc:
            result, key, word = str(exc).split(": ", 1)[1], "failed", "FAILED"
        say(f"{word} {run.title}: {result} [{time.monotonic() - start:.0f} s]")
        with lock:
            counts[key] += 1

    def worker(queue: list[SweepRun], gpu: str | None) -> None:
        while True:
            with lock:
                if not queue:
                    return
                run = queue.pop(0)
            work(run, gpu)

    for wave in waves(grid):
        queue = list(wave)
        threads = [threading.Thread(target=worker, args=(queue, gpu)) for gpu in slots]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except KeyboardInterrupt:  # the runs got the signal too and save last.pt; start no more
            with lock:
                queue.clear()
            echo("interrupted: the runs in progress save their last.pt; run the sweep again to resume")
            for t in threads:
                t.join()
            raise
    return counts


@dataclass
class SlurmOptions:
    """Resources of each SLURM job (None: the cluster's default)."""

    partition: str | None = None
    time_min: int | None = None
    gpus_per_job: int | None = 1
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    job_name: str = "letkd"
    sbatch: dict[str, str] = field(default_factory=dict)  # extra sbatch options, e.g. {"account": "abc"}


def submit_slurm(
    grid: Sequence[SweepRun], out_dir: str | Path, options: SlurmOptions, cluster: str | None = "slurm",
    wait: bool = False, echo: Printer = print,
) -> list[Any]:  # fmt: skip
    """Submit the grid's unfinished runs as submitit array jobs (folder ``out_dir/submitit``); prints each
    job's id and log files. ``cluster`` is passed to ``submitit.AutoExecutor`` ("debug" or "local" run the
    jobs on this machine). With ``wait``, waits for the jobs and prints each outcome."""
    import submitit

    todo = []
    for run in grid:
        if run_state(run.folder) == "completed":
            echo(f"skip   {run.title}: {outcome(run.folder)}")
        else:
            todo.append(run)
    jobs: list[Any] = []
    for n, wave in enumerate(waves(todo)):
        executor = submitit.AutoExecutor(folder=Path(out_dir) / SUBMITIT, cluster=cluster)
        sbatch = dict(options.sbatch)
        if n and jobs and cluster == "slurm" and not wait:  # start after the runs that train the teachers
            sbatch["dependency"] = "afterany:" + ":".join(sorted({j.job_id.split("_")[0] for j in jobs}))
        params: dict[str, Any] = {
            "name": options.job_name, "timeout_min": options.time_min,
            "gpus_per_node": options.gpus_per_job, "cpus_per_task": options.cpus_per_job,
            "mem_gb": options.mem_gb, "slurm_partition": options.partition,
            "slurm_array_parallelism": options.array_parallelism,
            "slurm_additional_parameters": sbatch or None,
        }  # fmt: skip
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        with executor.batch():
            wave_jobs = [executor.submit(ExecuteRun(run, in_process=True)) for run in wave]
        for run, job in zip(wave, wave_jobs):
            echo(
                f"submit {run.title}: job {job.job_id}  stdout {job.paths.stdout}  stderr {job.paths.stderr}"
            )
        jobs += wave_jobs
        if wait or cluster != "slurm":
            _wait(wave, wave_jobs, echo)
    return jobs


def _wait(runs: Sequence[SweepRun], jobs: Sequence[Any], echo: Printer) -> None:
    for run, job in zip(runs, jobs):
        try:
            _, result = job.result()
            echo(f"done   {run.title}: {result}")
        except Exception as exc:  # a failed job: report it and go on with the others
            echo(f"FAILED {run.title}: {str(exc).strip().splitlines()[-1]} (stderr {job.paths.stderr})")
