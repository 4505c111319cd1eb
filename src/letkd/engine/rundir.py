"""The run folder: resolved config, per-epoch metrics (JSON lines + TensorBoard) and the final summary.

Layout::

    runs/<config name>/<timestamp>/
        config.yaml      the resolved config (after overrides)
        metrics.jsonl    one JSON object per epoch
        tb/              TensorBoard event files
        last.pt best.pt  checkpoints (see letkd.engine.state)
        summary.json     written when the run ends
        .lock            held by the process running in the folder (see claim_run_dir)
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from letkd.config import RunConfig
from letkd.utils import atomic_write_text

if TYPE_CHECKING:
    from letkd.engine.state import Progress

LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
TENSORBOARD = "tb"
LOCK = ".lock"
#: what a run writes into its folder (a folder holding any of them holds a run)
RUN_FILES = (CONFIG, METRICS, SUMMARY, LAST, BEST, TENSORBOARD)


class RunFolderError(RuntimeError):
    """A run folder cannot be used: it holds a run, another process runs in it, or it is not writable."""


def trained_epochs(path: str | Path) -> int:
    """How many epochs the run in ``path`` has recorded (``metrics.jsonl`` rows; a checkpoint counts as
    one at least). 0: nothing of value in the folder, only what a run writes before its first epoch ends."""
    path = Path(path)
    try:
        rows = sum(1 for line in (path / METRICS).read_text().splitlines() if line.strip())
    except OSError:
        rows = 0
    return max(rows, int((path / LAST).is_file() or (path / BEST).is_file()))


@contextlib.contextmanager
def claim_run_dir(path: str | Path, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on the run folder ``path`` for the block (created if needed).

    A fresh run (not ``resume``) refuses a folder that already holds a run unless ``overwrite``, which
    removes that run's files (:data:`RUN_FILES`, nothing else) first; a run that never finished an epoch
    (no checkpoint, no metrics: stopped or failed in its first epoch) is replaced without ``overwrite``. A
    second process claiming the same folder is refused at once. Raises :class:`RunFolderError` with what to
    do. Folders created here are removed again when the block leaves nothing in them but the lock.
    """
    path = Path(path)
    created = next((p for p in [path, *path.parents] if p.exists()), None)
    fd = _open_lock(path)
    try:
        existing = [name for name in RUN_FILES if (path / name).exists()]
        if existing and not resume:
            if not overwrite and trained_epochs(path) > 0:
                raise RunFolderError(
                    f"{path} already holds a run ({', '.join(existing)}): pass --resume to continue it, "
                    "--overwrite to replace it, or choose another --out"
                )
            for name in existing:
                target = path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        yield path
    finally:
        if _holds_only_the_lock(path):
            (path / LOCK).unlink(missing_ok=True)  # still locked: nobody else claims it meanwhile
            while path != created and _rmdir(path):
                path = path.parent
        os.close(fd)  # releases the lock


def _holds_only_the_lock(path: Path) -> bool:
    try:
        return [p.name for p in path.iterdir()] == [LOCK]
    except OSError:
        return False


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except OSError:
        return False


def _open_lock(path: Path) -> int:
    """Create ``path`` if needed and return a descriptor holding the exclusive lock on ``path/.lock`` (with
    this process's pid written in it); :class:`RunFolderError` when the folder cannot be written or another
    process holds it."""
    import fcntl

    for _ in range(5):  # a folder removed by a run that just ended (see claim_run_dir) is made again
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "the folder is read-only", str(path))
            fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise RunFolderError(
                f"cannot write the run folder {path}: {exc.strerror or exc}; choose another --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = _read_holder(path)
            raise RunFolderError(
                f"another process (pid {holder}) is running in {path}; wait for it to finish, or choose "
                "another --out"
            ) from None
        if _same_file(fd, path / LOCK):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # locked a lock file that its holder removed on leaving: take the new one
    raise RunFolderError(f"cannot claim the run folder {path}: it keeps disappearing; choose another --out")


def _read_holder(path: Path) -> str:
    try:
        return (path / LOCK).read_text(errors="replace").strip() or "?"
    except OSError:
        return "?"


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


def lock_holder(path: str | Path) -> str | None:
    """The pid (as written in its ``.lock``) of the process running in the run folder ``path`` now, or None
    when no process holds the folder. Reads only: nothing in the folder is created or changed."""
    import fcntl

    try:
        fd = os.open(Path(path) / LOCK, os.O_RDONLY)
    except OSError:
        return None  # no lock file: no run holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # released with the descriptor
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)


def default_run_dir(cfg: RunConfig, base: str | Path = "runs") -> Path:
    """``<base>/<config name>/<YYYYmmdd-HHMMSS>`` (a numeric suffix is added if that folder exists)."""
    root = Path(base) / (cfg.name or "run")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = root / stamp, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


def latest_run_dir(cfg: RunConfig, base: str | Path = "runs") -> Path | None:
    """The newest folder under ``<base>/<config name>/`` holding a ``last.pt`` (None if there is none)."""
    root = Path(base) / (cfg.name or "run")
    runs = [p for p in root.glob("*") if (p / LAST).is_file()]
    runs.sort(key=lambda p: (p / LAST).stat().st_mtime)
    return runs[-1] if runs else None


def run_summary(cfg: RunConfig, progress: Progress, status: str, **extra: Any) -> dict[str, Any]:
    """The contents of ``summary.json``: status, what ran, best / last accuracy, timing, then ``extra``."""
    done = progress.history
    last_eval = next((r for r in reversed(done) if r.get("test_top1") is not None), None)
    ips = [r["images_per_second"] for r in done]
    return {
        "status": status,
        "method": cfg.method.name,
        "recipe": cfg.recipe,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "epochs": cfg.train.epochs,
        "epochs_done": len(done),
        "best_top1": progress.best_top1 if math.isfinite(progress.best_top1) else None,
        "best_epoch": progress.best_epoch if progress.best_epoch >= 0 else None,
        "last_top1": last_eval["test_top1"] if last_eval else None,
        "last_top5": last_eval["test_top5"] if last_eval else None,
        "wall_seconds": progress.wall_seconds,
        "seconds_per_epoch": progress.wall_seconds / len(done) if done else None,
        "images_per_second": sum(ips) / len(ips) if ips else None,
        **extra,
    }


def _json_safe(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLogger:
    """Writes the run folder's text files and TensorBoard events (create it on rank 0 only)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._tensorboard = tensorboard
        self._writer = None

    def write_config(self, cfg: RunConfig) -> Path:
        """Save the resolved config as ``config.yaml``."""
        return atomic_write_text(self.run_dir / CONFIG, cfg.to_yaml())

    def reset_history(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` from a checkpoint's history (on resume: drops epochs to be redone)."""
        text = "".join(json.dumps({k: _json_safe(v) for k, v in row.items()}) + "\n" for row in history)
        atomic_write_text(self.run_dir / METRICS, text)
        self._open_tensorboard(purge_step=len(history))

    def _open_tensorboard(self, purge_step: int | None = None) -> None:
        if not self._tensorboard or self._writer is not None:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD), purge_step=purge_step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch's metrics to ``metrics.jsonl`` and TensorBoard (step = epoch)."""
        with open(self.run_dir / METRICS, "a") as fh:
            fh.write(json.dumps({k: _json_safe(v) for k, v in row.items()}) + "\n")
        self._open_tensorboard()
        if self._writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(key, value, row["epoch"])
            self._writer.flush()

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Save ``summary.json``."""
        return atomic_write_text(self.run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
