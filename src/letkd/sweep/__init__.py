"""Sweeps: every config × grid point × seed as an ordinary run folder ``DIR/<config name>[/<point>]/seed<s>``.

Each run is ``letkd run CONFIG [overrides] [grid values] seed=S --out FOLDER --resume|--overwrite`` (the
same code path as ``letkd run``) in a process of its own, started from the working directory of the sweep
so that relative paths in the configs mean the same thing. Before the first run starts, every run is
checked as ``letkd run`` checks it (:mod:`letkd.sweep.grid`), the sweep folder is held by this sweep alone
and what it already holds is checked (:mod:`letkd.sweep.folder`, :mod:`letkd.sweep.checks`): a run folder
is skipped (complete) or resumed (``last.pt``) only when it holds the run asked for.

Executors: :func:`run_local` (runs side by side on this machine, ``runs_per_gpu`` per GPU, each a process
that dies with the sweep; :mod:`letkd.sweep.local`) and :func:`submit_slurm` (submitit array jobs;
:mod:`letkd.sweep.slurm`). Runs whose teacher is still to be trained from ``teacher.train_config`` are
ordered so that the first of them trains it while the others wait (local: a second wave; SLURM: a second
array depending on the first).
"""

from letkd.sweep.checks import asked_config, check_existing
from letkd.sweep.folder import MANIFEST, hold_sweep_dir, prepare_dir, read_manifest, update_manifest
from letkd.sweep.grid import LOGS, SweepError, SweepRun, build_grid, parse_grid, short_keys, split_values
from letkd.sweep.local import SweepStopped, run_local, shared_workers, visible_gpus, waves
from letkd.sweep.runs import ExecuteRun, RunFailed, failure_cause, outcome, read_summary, run_state
from letkd.sweep.slurm import SUBMITIT, SlurmOptions, submit_slurm

__all__ = [
    "LOGS",
    "MANIFEST",
    "SUBMITIT",
    "ExecuteRun",
    "RunFailed",
    "SlurmOptions",
    "SweepError",
    "SweepRun",
    "SweepStopped",
    "asked_config",
    "build_grid",
    "check_existing",
    "failure_cause",
    "hold_sweep_dir",
    "outcome",
    "parse_grid",
    "prepare_dir",
    "read_manifest",
    "read_summary",
    "run_local",
    "run_state",
    "shared_workers",
    "short_keys",
    "split_values",
    "submit_slurm",
    "update_manifest",
    "visible_gpus",
    "waves",
]
