"""A folder made read-only for the duration of a test, also when the tests run as root (who ignores chmod):
``chmod``, else ``chattr +i``, else file-system calls under the folder refused in this process."""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _writable(folder: Path) -> bool:
    probe = folder / ".write-probe"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink()
    return True


def _chattr(flag: str, folder: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    done = subprocess.run(["chattr", flag, str(folder)], capture_output=True)
    return done.returncode == 0


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Inside the block nothing can be created, replaced or removed in ``folder`` (it must exist)."""
    mode = folder.stat().st_mode
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        if not _writable(folder) or (_chattr("+i", folder) and not _writable(folder)):
            try:
                yield
            finally:
                _chattr("-i", folder)
            return
        with pytest.MonkeyPatch.context() as patch:
            _refuse_writes_below(patch, folder)
            yield
    finally:
        folder.chmod(mode)


def _refuse_writes_below(patch: pytest.MonkeyPatch, folder: Path) -> None:
    root = str(folder.resolve())

    def inside(path) -> bool:
        try:
            full = os.path.abspath(os.fspath(path))
        except TypeError:
            return False
        return full == root or full.startswith(root + os.sep)

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    real_open, real_os_open = builtins.open, os.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & writes and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    patch.setattr(builtins, "open", guarded_open)
    patch.setattr(os, "open", guarded_os_open)
    for name in ("mkdir", "unlink", "rmdir"):
        real = getattr(os, name)
        patch.setattr(
            os, name, lambda path, *a, _real=real, **k: refuse(path) if inside(path) else _real(path, *a, **k)
        )
    for name in ("replace", "rename"):
        real = getattr(os, name)
        patch.setattr(
            os,
            name,
            lambda src, dst, *a, _real=real, **k: refuse(dst) if inside(dst) else _real(src, dst, *a, **k),
        )
