"""Self-repair of cache entries: move damaged files aside (never delete them), clear what killed fits left.

Every repair prints one line ``warning: …`` on stderr saying what was wrong and where the damaged file
went (see "Cache problems" in docs/supervision.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def warn(message: str) -> None:
    """Print ``warning: <message>`` as one line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def move_aside(path: str | os.PathLike) -> Path | None:
    """Rename a damaged file or folder to ``<name>.corrupt-<UTC timestamp>`` beside it; return the new path.

    None when ``path`` no longer exists (another process moved it first).
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    return target


def remove_stale_temps(folder: str | os.PathLike, pattern: str, older_than: float) -> list[Path]:
    """Delete the temporary files/folders ``folder/pattern`` last modified before ``older_than``.

    Call it while holding the entry's lock: whoever wrote them held that lock before and has finished or
    died, so they are leftovers of an interrupted write. Returns what was removed.
    """
    removed = []
    for tmp in sorted(Path(folder).glob(pattern)):
        try:
            if tmp.lstat().st_mtime >= older_than:
                continue
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        except FileNotFoundError:
            continue
        removed.append(tmp)
    return removed


def report_stale(removed: Iterable[Path]) -> None:
    """One warning line naming the leftovers of interrupted fits that :func:`remove_stale_temps` removed."""
    removed = list(removed)
    if removed:
        names = ", ".join(str(p) for p in removed)
        warn(f"removed {len(removed)} stale temporary file(s) left by an interrupted fit: {names}")


def _record_problem(data: Any, keys: Iterable[str]) -> str | None:
    if not isinstance(data, dict):
        return f"holds a JSON {type(data).__name__}, not an object"
    for key in keys:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"field {key!r} is {value!r}, not a number"
        if not math.isfinite(value):
            return f"field {key!r} is {value!r}, not a finite number"
    return None


def read_cached_record(path: str | os.PathLike, keys: Iterable[str]) -> dict[str, Any] | None:
    """A cached JSON object whose ``keys`` are finite numbers, or None when ``path`` is missing or damaged.

    A damaged file (not UTF-8 JSON, truncated, wrong types, NaN) is moved aside with a warning, so the
    caller computes the value again.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        problem = _record_problem(data, keys)
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, ValueError) as exc:
        problem = f"is not valid JSON ({exc})"
    if problem is None:
        return data
    moved = move_aside(path)
    warn(f"ignoring the cached record {path}: it {problem}; moved it to {moved}, computing it again")
    return None
