"""Checks of command-line options shared by the sub-commands: numbers in range, files that are files.

Each failure is a :class:`~letkd.config.ConfigError` whose message names the option, what it got and what
it takes, so the command stops with one line before any work.
"""

from __future__ import annotations

from pathlib import Path

from letkd.config import MAX_CLASSES, ConfigError

#: what a run folder offers where a checkpoint file is expected, in order of preference
RUN_FOLDER_CHECKPOINTS = ("best.pt", "last.pt")


def in_range(flag: str, value: int | None, low: int, high: int | None = None) -> None:
    """Refuse ``value`` (when given) outside ``low..high``."""
    if value is None:
        return
    if value < low:
        raise ConfigError(f"{flag} {value}: must be at least {low}")
    if high is not None and value > high:
        raise ConfigError(f"{flag} {value}: must be at most {high:,}")


def num_classes(value: int | None) -> None:
    """``--num-classes``: a class count a model can have."""
    in_range("--num-classes", value, 1, MAX_CLASSES)


def checkpoint_file(flag: str, path: str) -> None:
    """A checkpoint option naming a folder: say so, and name the checkpoint a run folder holds."""
    folder = Path(path)
    if not folder.is_dir():
        return
    found = [folder / name for name in RUN_FOLDER_CHECKPOINTS if (folder / name).is_file()]
    hint = f"a run folder: pass {found[0]}" if found else "give the checkpoint file (.pt, .pth, .safetensors)"
    raise ConfigError(f"{flag} {path} is a folder, not a checkpoint file; {hint}")


def output_folder(flag: str, path: str | Path) -> None:
    """An output folder option naming an existing file: refuse before any work."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"{flag} {path} is a file; give a folder (it receives several files)")
