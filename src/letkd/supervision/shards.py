"""The processes of a ``torchrun`` launch sharing one teacher pass: shards, gathers, sums, row transfers.

Each process reads a contiguous block of the images (:meth:`Shards.range`), so the rows of process
``r`` come before those of ``r + 1`` in dataset order. Statistics are summed (:meth:`Shards.sum_`), small
arrays (sample keys) are gathered on every process (:meth:`Shards.all_gather`), and sample rows are sent
to process 0, which writes the row folder, in rank order (:meth:`Shards.gather_rows`). A single process
(no process group) is the same code with one shard. Tensors travel on the device of the group's backend
(CUDA for ``nccl``, CPU for ``gloo``), in chunks of :data:`CHUNK_BYTES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

CHUNK_BYTES = 32 << 20


class Shards:
    """Rank and world size of the current process group (one process when there is none)."""

    def __init__(self) -> None:
        self.enabled = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.enabled else 0
        self.world = dist.get_world_size() if self.enabled else 1
        if self.enabled and dist.get_backend() == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on process 0, which writes the row folders."""
        return self.rank == 0

    def range(self, num_images: int, rank: int | None = None) -> tuple[int, int]:
        """``[lo, hi)``: the contiguous block of image indices of process ``rank`` (default: this one)."""
        r = self.rank if rank is None else rank
        return num_images * r // self.world, num_images * (r + 1) // self.world

    def broadcast(self, obj: object) -> object:
        """Process 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place (a no-op for one process); returns it."""
        if self.enabled:
            moved = tensor.to(self.device)
            dist.all_reduce(moved)
            if moved is not tensor:
                tensor.copy_(moved)
        return tensor

    def all_gather(self, array: np.ndarray) -> list[np.ndarray]:
        """Every process's 1-D int64/uint64 ``array`` (lengths may differ), in rank order."""
        if not self.enabled:
            return [array]
        as_int = torch.from_numpy(np.ascontiguousarray(array).view(np.int64))
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([len(as_int)], dtype=torch.int64, device=self.device))
        counts = [int(s.item()) for s in sizes]
        padded = torch.zeros(max(counts), dtype=torch.int64, device=self.device)
        padded[: len(as_int)] = as_int.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return [p[:n].cpu().numpy().view(array.dtype) for p, n in zip(parts, counts)]

    def gather_rows(
        self,
        local: Callable[[int], Iterator[np.ndarray]],
        counts: list[int],
        dim: int,
        dtype: np.dtype,
        sink: Callable[[np.ndarray], None],
    ) -> None:
        """Pass every process's rows, in rank order, to ``sink`` on process 0.

        ``local(step)`` yields this process's rows in chunks of ``step`` rows; ``counts`` are the row
        counts of all processes (the same list everywhere).
        """
        step = max(1, CHUNK_BYTES // max(1, dim * np.dtype(dtype).itemsize))
        if self.is_main:
            for chunk in local(step):
                sink(chunk)
        if not self.enabled:
            return
        if not self.is_main:
            for chunk in local(step):
                dist.send(torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device), dst=0)
            return
        torch_dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
        for src in range(1, self.world):
            for lo in range(0, counts[src], step):
                buf = torch.empty(min(step, counts[src] - lo), dim, dtype=torch_dtype, device=self.device)
                dist.recv(buf, src=src)
                sink(buf.cpu().numpy())

    def barrier(self) -> None:
        """Wait for every process."""
        if self.enabled:
            dist.barrier()
