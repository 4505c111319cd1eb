"""One teacher pass over a dataset feeding every row folder a fit needs (several taps at once).

The teacher runs once per batch up to its deepest requested tap; each tap's map ``(B, D, H, W)`` becomes
``B·H·W`` rows handed to the :class:`~letkd.supervision.collect.FolderCollector` of every request that
reads it. Under ``torchrun`` each process reads its contiguous block of the images and the collectors
merge at the end (see :mod:`letkd.supervision.shards`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from letkd.supervision.collect import FolderCollector, RowRequest
from letkd.supervision.errors import NonFiniteFeaturesError
from letkd.supervision.extract import RowFile, non_finite_message
from letkd.supervision.shards import Shards
from letkd.taps import FeatureTaps

Source = tuple[str, bool]


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of a batch given as a ``(images, labels, …)`` sequence or a dict."""
    if isinstance(batch, dict):
        return batch["image"], torch.as_tensor(batch["label"])
    return batch[0], torch.as_tensor(batch[1])


def _maps(taps: FeatureTaps, images: torch.Tensor, sources: Sequence[Source]) -> dict[Source, torch.Tensor]:
    feats = taps(images)
    out = {}
    for path, pool in sources:
        f = feats[path]
        out[(path, pool)] = F.avg_pool2d(f, kernel_size=2, stride=2) if pool else f
    return out


@torch.inference_mode()
def feature_shapes(
    teacher: nn.Module, dataset: Dataset, sources: Sequence[Source], device: str | torch.device = "cpu"
) -> dict[Source, tuple[int, int, int]]:
    """``(D, H, W)`` of each ``(module path, pool2x2)`` map for the dataset's first image (one forward)."""
    sources = list(dict.fromkeys(sources))
    images, _ = split_batch(torch.utils.data.default_collate([dataset[0]]))
    was_training = teacher.training
    teacher.eval().to(device)
    try:
        with FeatureTaps(teacher, [p for p, _ in sources], stop_after_last=True) as taps:
            maps = _maps(taps, images.to(device), sources)
    finally:
        teacher.train(was_training)
    shapes = {}
    for source, f in maps.items():
        if f.dim() != 4:
            raise ValueError(f"tap {source[0]!r} gives shape {tuple(f.shape)}, not (B, D, H, W)")
        shapes[source] = (int(f.shape[1]), int(f.shape[2]), int(f.shape[3]))
    return shapes


def collect_rows(
    teacher: nn.Module,
    dataset: Dataset,
    requests: Sequence[RowRequest],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
    num_workers: int = 0,
    shards: Shards | None = None,
    shapes: dict[Source, tuple[int, int, int]] | None = None,
) -> list[RowFile | None]:
    """Fill the folder of every request in one pass of ``teacher`` over ``dataset``; return the folders.

    ``dataset`` yields ``(image, label)`` (the training split with the test transform). The teacher runs
    in eval mode on ``device`` under ``torch.inference_mode()`` (its mode is restored). Under a process
    group every process must call this with the same arguments; process 0 writes the folders and gets
    them, the others get None. Raises :class:`NonFiniteFeaturesError` naming the images at the first
    batch with NaN or infinite features; nothing is left behind by a failed pass.
    """
    from tqdm.auto import tqdm

    from letkd.utils import tqdm_disable

    shards = shards or Shards()
    num_images = len(dataset)  # type: ignore[arg-type]
    if num_images == 0:
        raise ValueError("cannot extract rows from an empty dataset")
    device = torch.device(device)
    sources = list(dict.fromkeys(r.source for r in requests))
    shapes = shapes or feature_shapes(teacher, dataset, sources, device)
    lo, hi = shards.range(num_images)
    part = dataset if (lo, hi) == (0, num_images) else Subset(dataset, range(lo, hi))
    loader = DataLoader(
        part, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    was_training = teacher.training
    teacher.eval().to(device)
    collectors: list[FolderCollector] = []
    try:
        for request in requests:
            collectors.append(
                FolderCollector(request, shapes[request.source], num_images, shards, batch_size, device)
            )
        taps_named = ", ".join(dict.fromkeys(r.tap for r in requests))
        with (
            FeatureTaps(teacher, [p for p, _ in sources], stop_after_last=True) as taps,
            torch.inference_mode(),
        ):
            batches = tqdm(
                loader,
                desc=f"teacher pass ({taps_named})",
                unit="batch",
                disable=tqdm_disable(progress and shards.is_main),
            )
            seen = 0
            for batch in batches:
                images, labels = split_batch(batch)
                maps = _maps(taps, images.to(device, non_blocking=True), sources)
                first = lo + seen
                for source in sources:
                    members = [(c, r) for c, r in zip(collectors, requests) if r.source == source]
                    tap = members[0][1].tap
                    f = maps[source]
                    if tuple(f.shape[1:]) != shapes[source]:
                        raise ValueError(
                            f"tap {tap!r} changed shape from {shapes[source]} to {tuple(f.shape[1:])} "
                            "between batches"
                        )
                    b, d, h, w = f.shape
                    rows = f.float().permute(0, 2, 3, 1).reshape(b * h * w, d)
                    if not bool(torch.isfinite(rows).all()):
                        raise NonFiniteFeaturesError(
                            non_finite_message(tap, f"images {first}-{first + b - 1}")
                        )
                    row_labels = labels.to(torch.int64).repeat_interleave(h * w)
                    for collector, _ in members:
                        collector.add(rows, row_labels, first)
                seen += len(images)
        if seen != hi - lo:
            raise RuntimeError(f"dataset yielded {seen} images, expected {hi - lo}")
        return [collector.finish() for collector in collectors]
    except BaseException:
        for collector in collectors:
            collector.abort()
        raise
    finally:
        teacher.train(was_training)
