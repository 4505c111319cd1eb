"""Where datasets are looked for: an explicit ``root``, ``$LETKD_DATA``, ``./data`` and system folders."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from letkd.data.errors import DatasetNotFoundError

#: environment variable naming a folder that holds datasets (each in its own sub-folder, or directly)
DATA_ENV = "LETKD_DATA"
#: where ``download=True`` puts datasets when no ``root`` is given
CACHE_DIR = Path("~/.cache/letkd").expanduser()


def search_bases(root: str | os.PathLike | None, extra: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Base folders to search, in order: only ``root`` if given, else ``$LETKD_DATA``, ``./data``, ``extra``,
    then the download cache."""
    if root is not None:
        return [Path(root).expanduser()]
    bases: list[Path] = []
    env = os.environ.get(DATA_ENV)
    if env:
        bases.append(Path(env).expanduser())
    bases.append(Path("data"))
    bases += [Path(p) for p in extra]
    bases.append(CACHE_DIR)
    return bases


def find_dataset_dir(
    name: str,
    root: str | os.PathLike | None,
    subdirs: Sequence[str],
    check: Callable[[Path], str | None],
    how_to_get: str,
    extra: Sequence[str | os.PathLike] = (),
) -> Path:
    """Return the first candidate folder for which ``check(folder)`` returns ``None`` (= complete).

    Candidates are each base folder's ``subdirs`` and then the base folder itself. ``check`` returns the
    reason a folder is not usable (e.g. "missing data_batch_1"); every reason ends up in the
    :class:`DatasetNotFoundError` raised when no folder passes.
    """
    looked: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for base in search_bases(root, extra):
        for cand in [*(base / s for s in subdirs), base]:
            key = cand.absolute()
            if key in seen:
                continue
            seen.add(key)
            if not cand.is_dir():
                looked.append((cand, "no such folder"))
                continue
            problem = check(cand)
            if problem is None:
                return cand
            looked.append((cand, problem))
    raise DatasetNotFoundError(name, looked, how_to_get)


def missing_files(folder: Path, names: Sequence[str], allow_gz: bool = False) -> str | None:
    """``None`` when all files are in ``folder`` (or ``name.gz`` with ``allow_gz``), else what is missing."""

    def present(n: str) -> bool:
        return (folder / n).is_file() or (allow_gz and (folder / f"{n}.gz").is_file())

    missing = [n for n in names if not present(n)]
    return f"missing {', '.join(missing)}" if missing else None
