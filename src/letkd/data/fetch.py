"""Fetching one file into a cache, verified: :func:`fetch_file` (used for dataset archives and published
teachers).

The file is downloaded by :mod:`letkd.data.http` (timeouts, stall detection, retries) under a temporary
``.partial`` name next to its final one, verified (checksum, and the caller's check), and only then renamed
into place. A partial, truncated or corrupt download is deleted and never used; the temporary files a killed
process left behind are removed by the next download of the same file. One process downloads a file at a
time (a lock file beside it, removed again); the others wait while it makes progress. A folder that cannot
be written is reported as such (:class:`FolderNotWritableError`), never as a network failure.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from letkd.data import http
from letkd.errors import LetkdError
from letkd.locks import EntryLock

#: suffixes of the temporary files a download or an extraction writes beside its target
TEMP_SUFFIXES = (".partial", ".download", ".extract")


class DownloadError(RuntimeError):
    """A file could not be downloaded or failed verification; the message says what to fetch and where.

    ``brief`` is the reason in one short clause (``URL: reason``), for messages that list several sources.
    """

    def __init__(self, message: str, brief: str | None = None) -> None:
        super().__init__(message)
        self.brief = brief or message


class FolderNotWritableError(LetkdError, RuntimeError):
    """A download cannot be stored: the folder (or a file in it) cannot be created or written."""


def progress_enabled() -> bool:
    """Progress bars only on terminals (logs redirected to a file get none)."""
    return sys.stderr.isatty()


def file_digest(path: Path, algorithm: str) -> str:
    """Hex ``md5`` or ``sha256`` of a file."""
    if algorithm == "md5":
        from torchvision.datasets.utils import calculate_md5

        return calculate_md5(path)
    from letkd.utils import sha256_file

    return sha256_file(path)


def _checksum_problem(path: Path, md5: str | None, sha256: str | None) -> str | None:
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected:
            got = file_digest(path, algorithm)
            if got != expected.lower():
                return f"{algorithm} {got}, expected {expected}"
    return None


def patience() -> float:
    """How long a waiter gives a lock holder that shows no progress: a few of its own timeouts."""
    timeout, retries = http.settings()
    return (retries + 2) * timeout + 120.0


@contextmanager
def writable(folder: Path, what: str, fix: str) -> Iterator[None]:
    """Turn a failure to create or write something in ``folder`` into :class:`FolderNotWritableError`
    naming the folder, the reason and ``fix``."""
    try:
        yield
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        raise FolderNotWritableError(_not_writable(folder, what, exc, fix)) from None
    except OSError as exc:
        if exc.filename is None:
            raise
        raise FolderNotWritableError(_not_writable(folder, what, exc, fix)) from None


def _not_writable(folder: Path, what: str, exc: BaseException, fix: str) -> str:
    reason = getattr(exc, "strerror", None) or str(exc)
    where = getattr(exc, "filename", None)
    at = f" ({where})" if where and str(where) != str(folder) else ""
    return f"cannot write {what} {folder}: {reason}{at}; {fix}"


def remove_stale_temporaries(dest: Path) -> int:
    """Delete the temporary files a killed download or extraction of ``dest`` left beside it (call while
    holding ``dest``'s lock: nobody else writes them then); return how many were removed."""
    removed = 0
    for path in dest.parent.glob(f".{dest.name}.*"):
        if path.suffix in TEMP_SUFFIXES and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_empty(folder: Path, stop: Path | None = None) -> None:
    """Remove ``folder`` and then its parents up to (not including) ``stop`` while they are empty."""
    while folder != stop and folder != folder.parent:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def fetch_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    sha256: str | None = None,
    verify: Callable[[Path], None] | None = None,
    then: str | None = "then run again",
    fix: str = "choose a writable folder",
    store: str = "the download folder",
) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already holds a verified copy; return ``dest``.

    The file is downloaded under a unique temporary name next to ``dest``, checked against ``md5`` /
    ``sha256`` (when given) and ``verify(path)`` (which raises :class:`DownloadError` to refuse it), and only
    then renamed to ``dest``. On any failure the temporary file is deleted and :class:`DownloadError` names
    the URL and ``dest`` (the place to put a copy fetched by hand; ``then`` ends that sentence; ``None``
    leaves the advice to the caller). A folder that cannot be written raises
    :class:`FolderNotWritableError` naming ``store`` (``fix`` says what to do). A folder created for
    ``dest`` is removed again when nothing ends up in it.
    """
    dest = Path(dest)
    in_the_way = _problem_with(dest, md5, sha256, verify)
    if dest.is_file() and in_the_way is None:
        return dest
    created = next((p for p in [dest.parent, *dest.parents] if p.exists()), None)
    lock = EntryLock(dest.parent / f".{dest.name}.lock", dest.name, "downloading", patience())
    try:
        with writable(dest.parent, store, fix):
            dest.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        try:
            if dest.is_file() and _problem_with(dest, md5, sha256, verify) is None:
                return dest  # another process fetched it while this one waited
            with writable(dest.parent, store, fix):
                remove_stale_temporaries(dest)
            _download_verified(url, dest, md5, sha256, verify, then, (store, fix), in_the_way)
        finally:
            lock.release()
    finally:
        if created is not None and not dest.exists():
            remove_empty(dest.parent, created)
    return dest


def _problem_with(
    dest: Path, md5: str | None, sha256: str | None, verify: Callable[[Path], None] | None
) -> str | None:
    """Why the file at ``dest`` is no usable copy (None when it is, or when there is none)."""
    if not dest.is_file():
        return None
    problem = _checksum_problem(dest, md5, sha256)
    if problem is None and verify is not None:
        try:
            verify(dest)
        except DownloadError as exc:
            problem = str(exc)
    return problem


def _download_verified(
    url: str,
    dest: Path,
    md5: str | None,
    sha256: str | None,
    verify: Callable[[Path], None] | None,
    then: str | None,
    place: tuple[str, str],
    in_the_way: str | None,
) -> None:
    store, fix = place
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.partial")
    checksum = f" ({'md5 ' + md5 if md5 else 'sha256 ' + sha256})" if md5 or sha256 else ""
    try:
        try:
            http.download(url, tmp, progress=progress_enabled())
        except http.LocalWriteError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else OSError(str(exc))
            raise FolderNotWritableError(_not_writable(dest.parent, store, cause, fix)) from None
        except http.TransferError as exc:
            brief = f"{url}: {exc.reason}"
            advice = ""
            if then is not None:
                advice = f". Without a network: fetch it on a connected machine{checksum}, put it at {dest}"
                advice += f", {then}"
            if in_the_way is not None:
                advice += (
                    f". The file already at {dest} is no usable copy ({in_the_way}: incomplete or corrupt): "
                    "replace it with a verified one"
                )
            raise DownloadError(f"cannot download {url} ({exc.reason}){advice}.", brief) from None
        problem = _checksum_problem(tmp, md5, sha256)
        if problem is not None:
            raise DownloadError(
                f"the file downloaded from {url} has {problem}: refused and deleted (an interrupted "
                f"transfer, a proxy error page or a changed file); run again to retry, or put a verified "
                f"copy at {dest}.",
                f"{url}: the file has {problem} (refused)",
            )
        if verify is not None:
            try:
                verify(tmp)
            except DownloadError as exc:
                message = f"the file downloaded from {url} was refused and deleted: {exc}"
                raise DownloadError(message, f"{url}: {exc}") from None
        with writable(dest.parent, store, fix):
            os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
