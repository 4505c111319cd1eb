"""Checks before any work: every missing input of a run at once, and settings that would exhaust memory.

- :func:`check_inputs`: the dataset (found, or fetched when downloads are allowed), the teacher checkpoint
  (a file, or a published teacher fetched into its cache) and the supervision cache folder. Every problem
  is collected; one is raised as it is, several as one :class:`MissingInputsError` listing each with its
  fix — so an offline machine learns everything it must provide in one go, before a teacher is trained.
- :func:`check_memory`: what the KD layers' templates and sub-classes will allocate (the sub-class score
  matrix is S x S, the targets B x K x H x W) against the memory this machine has, so an absurd setting
  stops in a second instead of after minutes of fitting.
- :func:`check_subsets`: ``data.train_subset`` / ``data.test_subset`` within the dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from letkd.config import ConfigError, RunConfig
from letkd.errors import ListedError


class MissingInputsError(ListedError):
    """Several inputs of a run are missing or cannot be stored; one item (with its fix) each."""


def _brief(exc: BaseException) -> str:
    """One line for one missing input (a listed error contributes its headline and items)."""
    if isinstance(exc, ListedError):
        parts = [exc.headline, *exc.items, exc.footer or ""]
        return " ".join(p for p in parts if p)
    return " ".join(str(exc).split())


def check_inputs(cfg: RunConfig, needs_cache: bool = True) -> None:
    """Make sure the run's inputs are there (fetching what may be fetched); raise every problem at once."""
    from letkd.data.errors import DatasetNotFoundError
    from letkd.data.fetch import DownloadError, FolderNotWritableError
    from letkd.models import published

    expected = (DatasetNotFoundError, DownloadError, FolderNotWritableError, ConfigError)
    problems: list[tuple[str, BaseException]] = []
    try:
        _find_dataset(cfg)
    except expected as exc:
        problems.append((f"dataset {cfg.data.name}", exc))
    tcfg = cfg.teacher
    if tcfg is not None and published.is_published_name(tcfg.checkpoint):
        try:
            published.resolve_teacher_checkpoint(tcfg.checkpoint, arch=tcfg.name)
        except expected as exc:
            problems.append((f"teacher {tcfg.checkpoint}", exc))
    elif tcfg is not None and tcfg.checkpoint and not Path(tcfg.checkpoint).is_file():
        what = "is a folder" if Path(tcfg.checkpoint).is_dir() else "not found"
        problems.append(
            (
                "teacher",
                ConfigError(
                    f"teacher checkpoint {what}: {tcfg.checkpoint} (set teacher.checkpoint=PATH, "
                    "or teacher.train_config to train one first)"
                ),
            )  # fmt: skip
        )
    if tcfg is not None and needs_cache:
        problem = _unwritable(Path(cfg.supervision.cache_dir))
        if problem is not None:
            folder = cfg.supervision.cache_dir
            problems.append(("supervision cache", ConfigError(f"supervision.cache_dir {folder}: {problem}")))
    if len(problems) == 1:
        raise problems[0][1]
    if problems:
        raise MissingInputsError(
            f"{len(problems)} inputs of this run are missing or unusable (nothing was started):",
            [f"{what}: {_brief(exc)}" for what, exc in problems],
        )


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be made or written (None when it can); leaves nothing behind."""
    from letkd.data.fetch import remove_empty

    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".letkd-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        return f"cannot be created or written ({exc.strerror or exc}); set it to a writable folder"
    finally:
        if existing is not None and existing != folder:
            remove_empty(folder, existing)
    return None


def _find_dataset(cfg: RunConfig) -> None:
    from letkd.data import create_dataset

    create_dataset(cfg.data.name, "test", root=cfg.data.root, transform=None, download=cfg.data.download)


def check_subsets(cfg: RunConfig) -> None:
    """``data.train_subset`` / ``test_subset`` must not ask for more images than the split holds (a larger
    number would silently mean "all of them" while the config records something else)."""
    from letkd.data import create_dataset

    for split, subset in (("train", cfg.data.train_subset), ("test", cfg.data.test_subset)):
        if subset is None:
            continue
        size = len(create_dataset(cfg.data.name, split, root=cfg.data.root, transform=None))
        if subset > size:
            raise ConfigError(
                f"data.{split}_subset {subset:,} is more than the {size:,} {split} images of "
                f"{cfg.data.name}: omit it to use them all, or give at most {size:,}"
            )


# ------------------------------------------------------------------------------------------------ memory
def available_memory() -> int:
    """Bytes of memory this machine can still give (``MemAvailable``; the physical size where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: never refuse


def layer_memory(
    layer: Any, num_classes: int, teacher_shape: Sequence[int], batch_size: int
) -> tuple[int, str]:
    """Bytes a KD layer's supervision and training need at the least, and what dominates, in words."""
    from letkd.methods.template_kd import expected_templates

    k = expected_templates(layer, num_classes)
    channels, height, width = (int(v) for v in teacher_shape)
    if getattr(layer, "teacher_pool", False):
        height, width = height // 2, width // 2
    targets = 6 * batch_size * k * height * width * 4  # targets, scores, softmax and their gradients
    if layer.kind == "subclass":
        scores = 3 * k * k * 8  # the S x S score matrix: counts, float64 copy, normalised
        if scores >= targets:
            return (
                scores,
                f"its {k:,} x {k:,} sub-class score matrix (num_classes x subclasses_per_class = {k:,})",
            )
        return targets, f"its {k:,} targets per location for a batch of {batch_size}"
    return targets + k * channels * 8, f"K={k:,} templates per location for a batch of {batch_size}"


def check_memory(
    cfg: RunConfig, layers: Sequence[Any], teacher_shapes: Sequence[Sequence[int]], num_classes: int
) -> None:
    """Refuse KD-layer settings whose supervision or targets cannot fit in this machine's memory."""
    have = available_memory()
    batch = cfg.data.batch_size
    for i, (layer, shape) in enumerate(zip(layers, teacher_shapes)):
        need, why = layer_memory(layer, num_classes, shape, batch)
        if need > have:
            setting = "subclasses_per_class" if layer.kind == "subclass" else "num_templates"
            raise ConfigError(
                f"method.params.layers.{i} ({layer.kind} at {layer.teacher_tap!r}) needs about "
                f"{_size(need)} for {why}, more than the {_size(have)} this machine has available: lower "
                f"{setting}"
            )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"
