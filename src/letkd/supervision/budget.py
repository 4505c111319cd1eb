"""Disk and memory a supervision fit will need, checked against what is free before the teacher pass.

Estimates per row folder (see :mod:`letkd.supervision.collect`): its files on disk when the pass ends,
the memory it holds during the pass (a sample pool of up to 1.25× its rows, class statistics), and the
memory of the fits that read it (K-means copies its training rows as float32; the sub-class fit holds
the LDA projection). The teacher, the data loader and the interpreter come on top (about 1–3 GB).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from letkd.errors import LetkdError
from letkd.supervision.collect import RowRequest
from letkd.supervision.spec import CodebookSpec, Spec

GB = 1e9
POOL_SLACK = 1.25
ROW_KEYS = 24  # priority, index, label of a sampled row
FOLDER_EXTRA = 4096  # meta.json, .npy headers
FIT_ROW_EXTRA = 64  # per row of a fit: assignment, distance, order, labels


class NotEnoughSpaceError(LetkdError, RuntimeError):
    """The fit would need more disk or memory than is free; the message names the cap to set."""


@dataclass
class Need:
    """What one row folder needs: bytes on disk, in memory during the pass and during its fits.

    ``cap`` is the setting that bounds it; ``disk_per_unit`` / ``ram_per_unit`` are the bytes one unit of
    that setting costs (a row, or a row of every class), to suggest a value that fits.
    """

    what: str
    disk: int
    pass_ram: int
    fit_ram: int
    cap: str
    disk_per_unit: int
    ram_per_unit: int
    disk_fixed: int = 0
    ram_fixed: int = 0


def folder_need(
    request: RowRequest,
    shape: tuple[int, int, int],
    num_images: int,
    specs: list[Spec],
    batch_size: int = 256,
    kmeans_rows: dict[int, int | None] | None = None,
) -> Need:
    """The :class:`Need` of the folder of ``request`` for feature maps ``shape`` (D, H, W) of ``num_images``.

    ``specs`` are the fits that read the folder; ``kmeans_rows`` maps a codebook's K to the rows its
    K-means trains on (None = all kept rows).
    """
    dim, h, w = shape
    total = num_images * h * w
    per_class = request.keep == "per_class"
    classes = max(1, request.num_classes)
    caps = sorted(
        {
            "supervision.max_rows" if isinstance(s, CodebookSpec) else "supervision.rows_per_class"
            for s in specs
        }
    )
    cap_name = " and ".join(caps)
    sample_bytes = dim * np.dtype(request.dtype).itemsize
    unit = 0 if len(caps) != 1 else (classes if caps[0].endswith("rows_per_class") else 1)
    # float32 map and float64 copy for statistics; a batch never holds more than the dataset
    batch_ram = min(batch_size, num_images) * h * w * dim * 16
    if request.keeps_all(total):
        kept, row_bytes, pool = total, dim * 4 + 8, 0
    else:
        kept = min(total, int(request.cap or 0) * (classes if per_class else 1))
        row_bytes = sample_bytes + 16
        pool = int(POOL_SLACK * kept * (sample_bytes + ROW_KEYS))
    stats = (classes * dim + dim * dim) * 8 if request.stats else 0
    fit_ram = 0
    for spec in specs:
        if isinstance(spec, CodebookSpec):
            train = (kmeans_rows or {}).get(spec.num_templates)
            train = kept if train is None else min(kept, train)
            fit_ram = max(fit_ram, train * dim * 4 + kept * FIT_ROW_EXTRA + spec.num_templates * dim * 8)
        else:
            comps = min(spec.lda_components, classes - 1, dim)
            subclasses = classes * spec.subclasses_per_class  # score matrix: int64 counts, float64, float32
            score = int(2.5 * subclasses * subclasses * 8)
            fit_ram = max(fit_ram, kept * (comps * 4 + FIT_ROW_EXTRA) + 3 * dim * dim * 8 + score)
    where = f"teacher tap {request.tap!r}"
    what = (
        f"every row of {where} ({total:,} x {dim} float32)"
        if request.keeps_all(total)
        else f"the sample of {kept:,} rows x {dim} {request.dtype} of {where}"
    )
    return Need(
        what=what,
        disk=kept * row_bytes + stats + FOLDER_EXTRA,
        pass_ram=pool + 2 * stats + batch_ram,
        fit_ram=fit_ram,
        cap=cap_name,
        disk_per_unit=unit * (sample_bytes + 16),
        ram_per_unit=unit * max(int(POOL_SLACK * (sample_bytes + ROW_KEYS)), dim * 4 + FIT_ROW_EXTRA),
        disk_fixed=stats + FOLDER_EXTRA,
        ram_fixed=2 * stats + batch_ram,
    )


def free_disk_bytes(folder: str | Path) -> int:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    path = Path(folder).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return int(shutil.disk_usage(path).free)


def available_ram_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes, or None where it cannot be read (not Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _round_down(value: float) -> int:
    """``value`` rounded down to two significant digits (a readable suggestion)."""
    if value < 1:
        return 0
    digits = len(str(int(value))) - 2
    step = 10 ** max(0, digits)
    return int(value // step * step)


def _size(num_bytes: float) -> str:
    """``3.4 GB`` / ``120.0 MB``: bytes in decimal units, one decimal."""
    return f"{num_bytes / GB:.1f} GB" if num_bytes >= 0.1 * GB else f"{num_bytes / 1e6:.1f} MB"


def _advice(
    needs: list[Need],
    free: float,
    own: Callable[[Need], int],
    fixed: Callable[[Need], int],
    per_unit: Callable[[Need], int],
) -> str:
    """Which caps to set, and to what, so that the sum of ``own`` over ``needs`` fits in ``free``.

    Caps the biggest folders first until the rest fits; the room left is shared equally among them.
    """
    picked: list[Need] = []
    rest = sum(own(n) for n in needs)
    for need in sorted(needs, key=own, reverse=True):
        picked.append(need)
        rest -= own(need)
        if rest + sum(fixed(n) for n in picked) < free:
            break
    share = (free - rest - sum(fixed(n) for n in picked)) / len(picked)
    parts = []
    for need in picked:
        value = _round_down(share / per_unit(need)) if per_unit(need) else None
        if value is None:
            parts.append(need.cap)
        elif value >= 1:
            parts.append(f"{need.cap} to at most {value}")
    if not parts:
        return "make room (even a minimal sample does not fit)"
    return "set " + " and ".join(dict.fromkeys(parts)) + " (or make room)"


def check_budget(needs: list[Need], cache_dir: str | Path) -> None:
    """Raise :class:`NotEnoughSpaceError` (one line: how much is needed, which cap to set) when the row
    folders of ``needs`` would not fit on the disk of ``cache_dir`` or in the available memory."""
    if not needs:
        return
    disk = sum(n.disk for n in needs)
    free = free_disk_bytes(cache_dir)
    if disk > free:
        biggest = max(needs, key=lambda n: n.disk)
        advice = _advice(needs, free, lambda n: n.disk, lambda n: n.disk_fixed, lambda n: n.disk_per_unit)
        raise NotEnoughSpaceError(
            f"supervision needs {_size(disk)} of disk in {cache_dir} for the teacher pass but "
            f"{_size(free)} is free: {biggest.what} takes {_size(biggest.disk)}; {advice}"
        )
    available = available_ram_bytes()
    pass_ram = sum(n.pass_ram for n in needs)
    ram = max([pass_ram] + [n.fit_ram for n in needs])
    if available is not None and ram > available:
        if pass_ram >= ram:  # the pass holds every folder's pools at once
            group, own, fixed = needs, (lambda n: n.pass_ram), (lambda n: n.ram_fixed)
        else:  # one fit at a time: only the biggest matters
            group, own, fixed = [max(needs, key=lambda n: n.fit_ram)], (lambda n: n.fit_ram), (lambda n: 0)
        biggest = max(group, key=own)
        advice = _advice(group, available, own, fixed, lambda n: n.ram_per_unit)
        raise NotEnoughSpaceError(
            f"supervision needs {_size(ram)} of memory (beyond the teacher) but {_size(available)} "
            f"is available: {biggest.what} holds {_size(own(biggest))}; {advice}"
        )
