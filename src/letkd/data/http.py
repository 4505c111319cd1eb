"""Fetching one URL into a local file without ever hanging: connect and read timeouts, a stall detector,
retries with back-off, and errors that tell a network problem from a local one.

- Every connection and every read waits at most ``$LETKD_DOWNLOAD_TIMEOUT`` seconds (default 30): a server
  that accepts and never answers, or a transfer that stops sending bytes, ends the attempt.
- A transient failure (a timeout, a reset or cut transfer, HTTP 5xx/408/429) is retried
  ``$LETKD_DOWNLOAD_RETRIES`` times (default 2) after 2, 4, ... seconds, each retry announced by one
  ``warning:`` line. A permanent one (no route or name resolution, connection refused, HTTP 4xx) is not.
- While bytes arrive the caller's lock is kept alive (:func:`letkd.locks.beat`), so a process waiting for the
  same file waits as long as the transfer makes progress, and no longer.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path
from urllib.error import HTTPError, URLError

from letkd.errors import LetkdError
from letkd.locks import beat

TIMEOUT_ENV = "LETKD_DOWNLOAD_TIMEOUT"
RETRIES_ENV = "LETKD_DOWNLOAD_RETRIES"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 2
BACKOFF_SECONDS = 2.0
CHUNK = 1 << 16


class TransferError(Exception):
    """One URL could not be fetched; ``reason`` says why in a few words, ``transient`` whether a retry may
    help."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.reason, self.transient = reason, transient


class LocalWriteError(Exception):
    """The local file a download goes to could not be written (the :class:`OSError` is ``__cause__``)."""


class DownloadSettingError(LetkdError, ValueError):
    """``$LETKD_DOWNLOAD_TIMEOUT`` or ``$LETKD_DOWNLOAD_RETRIES`` is not a usable number."""


def settings() -> tuple[float, int]:
    """``(timeout seconds, retries)`` from the environment (defaults 30 s, 2 retries)."""
    raw_timeout = os.environ.get(TIMEOUT_ENV, "")
    raw_retries = os.environ.get(RETRIES_ENV, "")
    try:
        timeout = float(raw_timeout) if raw_timeout else DEFAULT_TIMEOUT
        retries = int(raw_retries) if raw_retries else DEFAULT_RETRIES
    except ValueError:
        timeout, retries = -1.0, -1
    if not (0 < timeout <= 3600) or not (0 <= retries <= 20):
        raise DownloadSettingError(
            f"${TIMEOUT_ENV}={raw_timeout!r} / ${RETRIES_ENV}={raw_retries!r}: expected seconds in (0, 3600] "
            "and a retry count in 0..20 (unset both for 30 s and 2 retries)"
        )
    return timeout, retries


def _reason(exc: BaseException, timeout: float) -> TransferError:
    """What went wrong, and whether trying again may help."""
    if isinstance(exc, HTTPError):
        transient = exc.code >= 500 or exc.code in (408, 429)
        return TransferError(f"the server answered HTTP {exc.code} {exc.reason}", transient)
    if isinstance(exc, URLError) and not isinstance(exc.reason, (TimeoutError, socket.timeout)):
        return TransferError(f"no connection: {exc.reason}", False)
    if isinstance(exc, (TimeoutError, socket.timeout, URLError)):
        return TransferError(f"no answer for {timeout:g} s: the server or the transfer stalled", True)
    if isinstance(exc, (ConnectionError, http.client.HTTPException)):
        return TransferError(f"the connection broke ({type(exc).__name__}: {exc})", True)
    return TransferError(f"{type(exc).__name__}: {exc}", False)


def _one_attempt(url: str, out: Path, timeout: float, progress: bool) -> None:
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "letkd"})
    try:
        fh = open(out, "wb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise LocalWriteError(str(exc)) from exc
    with fh:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, disable=not progress)
                received = 0
                with bar:
                    while block := response.read(CHUNK):
                        try:
                            fh.write(block)
                        except OSError as exc:
                            raise LocalWriteError(str(exc)) from exc
                        received += len(block)
                        bar.update(len(block))
                        beat()
                if total is not None and received != total:
                    raise TransferError(f"the transfer stopped after {received} of {total} bytes", True)
        except (LocalWriteError, TransferError):
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _reason(exc, timeout) from None


def download(url: str, out: Path, progress: bool = False) -> None:
    """Fetch ``url`` into the file ``out`` (overwritten), retrying transient failures.

    Raises :class:`TransferError` (the last attempt's reason, and how many were made) or
    :class:`LocalWriteError` when ``out`` cannot be written.
    """
    timeout, retries = settings()
    for attempt in range(retries + 1):
        try:
            _one_attempt(url, out, timeout, progress)
            return
        except TransferError as exc:
            if not exc.transient or attempt == retries:
                tries = f" ({attempt + 1} attempts)" if attempt else ""
                raise TransferError(exc.reason + tries, exc.transient) from None
            wait = BACKOFF_SECONDS * 2**attempt
            print(
                f"warning: {url}: {exc.reason}; retrying in {wait:g} s ({attempt + 1} of {retries})",
                file=sys.stderr,
                flush=True,
            )
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:  # keep the lock alive while waiting
                beat()
                time.sleep(min(0.5, wait))
