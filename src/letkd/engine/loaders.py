"""DataLoaders with reproducible per-epoch shuffling and exact (un-padded) sharding of the test set.

Training order: :class:`torch.utils.data.DistributedSampler` with ``seed=cfg.seed`` — its permutation for an
epoch comes from a generator seeded with ``seed + epoch``, so every epoch's order is reproducible, with one
process (``num_replicas=1``) or many. The loader's own generator (which seeds the workers' augmentation RNG)
is re-seeded by the trainer at the start of each epoch. With ``data.on_device`` both loaders are
:class:`letkd.data.device_loader.DeviceLoader` (same samplers, augmentation on the device).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from letkd.config import RunConfig
from letkd.engine.distributed import DistInfo


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_num_workers(cpus: int | None = None) -> int:
    """Default DataLoader workers: ``min(4, cpus - 1)``; 0 on machines with 2 CPUs or fewer.

    On two cores a worker process competes with the training threads for the same cores, and loading
    in the main process is faster.
    """
    cpus = available_cpus() if cpus is None else cpus
    return 0 if cpus <= 2 else min(4, cpus - 1)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: every sample exactly once over all ranks (no padding),
    so summed correct/count equal the single-process result."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def _loader_kwargs(cfg: RunConfig, device: torch.device, deterministic: bool) -> dict:
    workers = cfg.data.num_workers if cfg.data.num_workers is not None else auto_num_workers()
    kwargs: dict = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        # persistent workers carry their RNG across epochs, which a resumed run cannot reproduce
        kwargs["persistent_workers"] = not deterministic
        kwargs["prefetch_factor"] = 4
    return kwargs


def build_train_loader(dataset: Dataset, cfg: RunConfig, info: DistInfo, device: torch.device) -> DataLoader:
    """Shuffled training loader; each epoch, call ``sampler.set_epoch(e)``, re-seed ``loader.generator``."""
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed, drop_last=False
    )
    if cfg.data.on_device:
        from letkd.data.device_loader import DeviceLoader

        return DeviceLoader(dataset, cfg.data.batch_size, device, sampler, drop_last=cfg.data.drop_last)
    return DataLoader(
        dataset,
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        drop_last=cfg.data.drop_last,
        generator=torch.Generator(),
        # a dataset that changes per epoch (set_epoch) must be re-sent to the workers each epoch
        **_loader_kwargs(cfg, device, cfg.train.deterministic or hasattr(dataset, "set_epoch")),
    )


def build_test_loader(dataset: Dataset, cfg: RunConfig, info: DistInfo, device: torch.device) -> DataLoader:
    """Sequential test loader; under DDP each rank sees a disjoint shard, together the whole set once."""
    shard = ShardSampler(len(dataset), info.rank, info.world_size)
    if cfg.data.on_device:
        from letkd.data.device_loader import DeviceLoader

        return DeviceLoader(dataset, cfg.data.test_batch_size, device, shard)
    return DataLoader(
        dataset,
        batch_size=cfg.data.test_batch_size,
        sampler=shard,
        **_loader_kwargs(cfg, device, deterministic=False),  # no randomness in testing
    )
