"""Process-group set-up for ``torchrun`` launches (DistributedDataParallel), and single-process fall-backs.

``torchrun --nproc_per_node=N -m letkd train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*``;
:func:`init_distributed` reads them (``env://``), picks ``nccl`` on CUDA and ``gloo`` otherwise, and binds
each process to ``cuda:LOCAL_RANK``. Without those variables everything runs as a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from letkd.device import select_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: ``rank`` of ``world_size``; ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when running under a process group with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0)."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(preference: str | None = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group described by the environment (if any) and return ``(info, device)``."""
    if not launched_by_torchrun():
        return DistInfo(), select_device(preference)
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    device = select_device(preference, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return info, device


def current_info() -> DistInfo:
    """The :class:`DistInfo` of the already-initialised process group (single process if none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every rank (returns it unchanged when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer (e.g. BatchNorm running statistics) of ``module`` from rank ``src`` to all ranks."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)


def cleanup() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
