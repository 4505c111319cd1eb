"""The sweep folder: created and checked writable, held by one sweep at a time (``.lock``), and its
manifest ``sweep.json`` — validated before use, and only ever added to.

``sweep.json`` holds every run any call put in the folder (config, seed, overrides, grid point, folder),
the derived lists of configs and seeds, and one record per call (time, settings). A run continued by a
later call with other settings that give the same run (more epochs) is listed again, the later entry last.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from letkd.sweep.grid import LOGS, SweepError, SweepRun
from letkd.utils import atomic_write_text

MANIFEST = "sweep.json"
LOCK = ".lock"  # as in a run folder: held by the process working in the folder
#: the keys every run entry of a manifest has, with their types
_RUN_KEYS = {"folder": str, "config": str, "seed": int, "overrides": list}


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


@contextlib.contextmanager
def hold_sweep_dir(out_dir: str | Path) -> Iterator[Path]:
    """Hold ``out_dir/.lock`` for the block: a second sweep into the same folder is refused at once
    with :class:`SweepError` naming the pid of the one running there."""
    import fcntl

    path = Path(out_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise SweepError(f"cannot write to the sweep folder {out_dir}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise SweepError(
                f"another sweep (pid {holder}) is running in {out_dir}; wait for it to finish, or pass "
                "another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield Path(out_dir)
    finally:
        os.close(fd)


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"{json.dumps(entry)[:40]} is not an object"
    for key, kind in _RUN_KEYS.items():
        value = entry.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key!r} is {json.dumps(value)}, not a {kind.__name__}"
    if Path(entry["folder"]).is_absolute() or ".." in Path(entry["folder"]).parts:
        return f"folder {entry['folder']!r} is not inside the sweep folder"
    return None


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The folder's ``sweep.json`` (None when there is none), checked entry by entry; raises
    :class:`SweepError` saying what is wrong instead of replacing a manifest that cannot be used."""
    path = Path(out_dir) / MANIFEST
    fix = "repair it, or move it aside (it lists the runs of earlier calls) and run again"
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        raise SweepError(f"{path} is not a file; {fix}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SweepError(f"{path} cannot be read as a sweep manifest ({exc}); {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise SweepError(f"{path} is not a sweep manifest (no list of runs); {fix}")
    bad = [(n, p) for n, e in enumerate(data["runs"]) if (p := _entry_problem(e))]
    if bad:
        listed = "; ".join(f"run {n}: {p}" for n, p in bad[:3]) + ("; ..." if len(bad) > 3 else "")
        raise SweepError(f"{path} has {len(bad)} invalid run entr{'y' if len(bad) == 1 else 'ies'} "
                         f"({listed}); {fix}")  # fmt: skip
    return data


def update_manifest(out_dir: str | Path, grid: Sequence[SweepRun], settings: dict[str, Any]) -> Path:
    """Add this call's runs (those not already listed as they are) and a record of the call to
    ``sweep.json``; earlier entries are kept as they are. Raises :class:`SweepError` for a manifest that
    cannot be used (:func:`read_manifest`)."""
    out = Path(out_dir).resolve()
    data = read_manifest(out) or {"runs": []}
    runs: list[dict[str, Any]] = list(data["runs"])
    current = {r["folder"]: r for r in runs}
    for run in grid:
        entry = json.loads(json.dumps(asdict(run)))  # as stored: lists, not tuples
        entry["folder"] = os.path.relpath(run.folder, out)
        entry.pop("sweep_dir", None)
        earlier = current.get(entry["folder"])
        if earlier is None or any(earlier.get(k) != entry[k] for k in ("config", "overrides")):
            runs.append(entry)
            current[entry["folder"]] = entry
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    calls = [c for c in data.get("calls", []) if isinstance(c, dict)] + [{"time": now, "settings": settings}]
    manifest = {
        **data,
        "updated": now,
        "configs": list(dict.fromkeys(r["config"] for r in runs)),
        "seeds": sorted({r["seed"] for r in runs}),
        "settings": settings,
        "calls": calls,
        "runs": runs,
    }
    return atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
