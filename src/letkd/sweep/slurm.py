"""The SLURM executor: the grid's unfinished runs as submitit array jobs, each job running ``letkd run`` in
its own process; the runs that reuse a teacher trained on first use wait (``--dependency=afterany``) for the
array that trains it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from letkd.sweep.grid import SweepRun
from letkd.sweep.local import waves
from letkd.sweep.runs import ExecuteRun, outcome, run_state

SUBMITIT = "submitit"
Printer = Callable[[str], None]


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
        if run_state(run.folder, run.epochs) == "completed":
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
