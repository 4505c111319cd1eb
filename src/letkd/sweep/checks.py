"""Checks of what a sweep folder already holds, made with the folder held and before any run starts: a run
folder is skipped or resumed only when it holds the run asked for (:mod:`letkd.engine.identity`), no
process left by an earlier sweep still runs in one, and every log file can be written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from letkd.engine.identity import run_differences
from letkd.engine.rundir import CONFIG, LAST, lock_holder
from letkd.sweep.grid import SweepError, SweepRun, listing
from letkd.sweep.runs import read_summary

#: runs listed by name in one message (the others are counted)
_LISTED = 4


def asked_config(run: SweepRun):  # noqa: ANN201 (RunConfig; imported lazily)
    """The resolved config of ``run`` as its run folder would store it (class count resolved)."""
    from letkd.build import resolve_num_classes
    from letkd.config import load_config

    cfg = load_config(run.config, list(run.overrides))
    cfg.model.num_classes = resolve_num_classes(cfg)
    return cfg


def _holds_a_run(folder: Path) -> bool:
    """A folder the sweep would skip or resume (a completed summary or a checkpoint), not restart."""
    return (folder / LAST).is_file() or read_summary(folder).get("status") == "completed"


def _names(runs: Sequence[SweepRun]) -> str:
    shown = ", ".join(r.title for r in runs[:_LISTED])
    return shown + (f" and {len(runs) - _LISTED} more" if len(runs) > _LISTED else "")


def check_existing(grid: Sequence[SweepRun]) -> None:
    """Raise :class:`SweepError` listing every run folder of ``grid`` that holds another run than the one
    asked for (with the keys that differ), every folder a process still runs in, and every log path that
    cannot be a file."""
    problems: list[str] = []
    differing: dict[str, list[SweepRun]] = {}
    for run in grid:
        folder = Path(run.folder)
        if run.log.exists() and not run.log.is_file():
            problems.append(f"{run.log} is not a file (the log of {run.title}); move it aside")
        if not folder.is_dir():
            continue
        holder = lock_holder(folder)
        if holder is not None:
            problems.append(
                f"a process (pid {holder}) is still running in {folder} (a run left by an earlier sweep, or "
                f"a 'letkd run' into it): wait for it to end, or stop it with 'kill {holder}'"
            )
            continue
        if _holds_a_run(folder):
            changes = run_differences(folder, asked_config(run))
            if changes:
                differing.setdefault(", ".join(changes), []).append(run)
    if differing:
        out = Path(grid[0].folder).parents[1] if not grid[0].sweep_dir else Path(grid[0].sweep_dir)
        listed = "; ".join(f"{_names(runs)}: {changes}" for changes, runs in differing.items())
        problems.append(
            f"{out} holds runs made with another config than asked for (in the folder -> asked): {listed}. "
            f"A run is skipped or resumed only when its {CONFIG} is the config asked for: pass another "
            f"--out, or delete those run folders to redo them"
        )
    if problems:
        raise SweepError(listing("cannot start the sweep", problems))
