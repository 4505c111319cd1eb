"""An exclusive, crash-safe lock on one entry of a cache: ``<entry>.lock`` held with ``fcntl.flock``.

The kernel releases a ``flock`` when its holder exits, however it exits (kill -9 included), so a lock is
never left held by a dead process. The holder writes its pid into the file, which another process waiting
for the entry names in its message. The file is removed on release; a waiter that acquires a file which
was removed meanwhile opens the new one (the usual ``flock`` + ``unlink`` protocol), so two processes
never both hold an entry.

A lock taken with ``patience`` is never waited on forever: its holder calls :func:`beat` while it works
(a download calls it for every block it receives), which touches the lock file, and a waiter that sees no
beat for ``patience`` seconds stops with :class:`LockStalledError` naming the holder's pid and what to do.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from types import TracebackType

from letkd.errors import LetkdError

#: at most one heartbeat per this many seconds (touching a file costs a system call)
BEAT_INTERVAL = 1.0
#: how often a waiter with ``patience`` looks at the lock
POLL_SECONDS = 0.2


class LockStalledError(LetkdError, RuntimeError):
    """Another process holds a lock but has shown no sign of work for longer than the waiter's patience."""


def _holder_pid(fd: int) -> str:
    """The pid written in an open lock file, or ``"unknown"`` when it is empty or unreadable."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


_HELD: list[EntryLock] = []  # locks this process holds with a heartbeat
_last_beat = 0.0


def beat() -> None:
    """Tell processes waiting for a lock this process holds that it is still working (cheap: throttled)."""
    global _last_beat
    now = time.monotonic()
    if not _HELD or now - _last_beat < BEAT_INTERVAL:
        return
    _last_beat = now
    for lock in _HELD:
        if lock._fd is not None:
            try:
                os.utime(lock._fd)
            except OSError:
                pass  # a read-only or vanished lock file: the waiters fall back to their patience


class EntryLock:
    """``with EntryLock(path, what):`` holds the exclusive lock ``path`` on a cache entry.

    A second process (or a second lock object in this one) blocks until the holder releases it, after
    printing one line ``waiting for another process <doing> <what> (pid N); lock file <path>`` on stderr.
    With ``patience`` (seconds) the waiter gives up with :class:`LockStalledError` when the holder has not
    called :func:`beat` for that long. :attr:`acquired_at` is the time (``time.time()``) the lock was
    acquired: any temporary file of the entry older than that belongs to an earlier holder, which has
    finished or died.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        what: str,
        doing: str = "fitting",
        patience: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.what = what
        self.doing = doing
        self.patience = patience
        self.acquired_at: float | None = None
        self._fd: int | None = None

    def acquire(self) -> EntryLock:
        """Block until this process holds the lock; returns ``self``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        told = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not told:
                        print(
                            f"waiting for another process {self.doing} {self.what} (pid {_holder_pid(fd)}); "
                            f"lock file {self.path}",
                            file=sys.stderr,
                            flush=True,
                        )
                        told = True
                    self._wait(fd)
                if self._is_current(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder removed this file on release: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        self.acquired_at = time.time()
        if self.patience is not None:
            _HELD.append(self)
        return self

    def _wait(self, fd: int) -> None:
        """Block until ``fd`` is locked by this process; with :attr:`patience`, give up on a silent holder."""
        if self.patience is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        while True:
            time.sleep(POLL_SECONDS)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            silent = time.time() - os.fstat(fd).st_mtime
            if silent > self.patience:
                pid = _holder_pid(fd)
                raise LockStalledError(
                    f"another process (pid {pid}) has been {self.doing} {self.what} but has shown no "
                    f"progress for {silent:.0f} s (lock file {self.path}): if it hangs, stop it (kill {pid}) "
                    "and run again"
                )

    def _is_current(self, fd: int) -> bool:
        """Whether the open file ``fd`` is still the file at :attr:`path` (not removed by a past holder)."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        """Remove the lock file and release the lock (a no-op when not held)."""
        if self._fd is None:
            return
        if self in _HELD:
            _HELD.remove(self)
        try:
            self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> EntryLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
