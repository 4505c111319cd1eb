"""Accuracy and running sums for one epoch; sums (not means) so that they all-reduce exactly across ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Number of samples whose label is among the top-k logits, for each k in ``ks``.

    ``logits (B, classes)``, ``labels (B,)`` → ``(len(ks),)`` float tensor of counts on ``logits.device``.
    ``k`` larger than the number of classes counts every sample as correct.
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (B, kmax)
    hits = top.eq(labels.view(-1, 1))  # (B, kmax)
    cum = hits.cumsum(dim=1).clamp_(max=1)  # 1 from the rank of the label onwards
    return torch.stack([cum[:, min(k, kmax) - 1].sum() for k in ks]).float()


class SumMeter:
    """Named running sums plus a sample count; ``mean(name)`` = sum / count.

    ``all_reduce()`` sums every value over the ranks of a process group (no-op when not distributed).
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float], count: int) -> None:
        """Add per-batch *sums* (e.g. loss × batch size, number correct) for ``count`` samples."""
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.count += int(count)

    def mean(self, name: str) -> float:
        """``sums[name] / count`` (0 if nothing was added)."""
        return self.sums.get(name, 0.0) / self.count if self.count else 0.0

    def all_reduce(self, device: torch.device | str = "cpu") -> None:
        """Sum ``sums`` and ``count`` over all ranks (every rank must hold the same names)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        names = sorted(self.sums)
        values = [self.sums[n] for n in names] + [float(self.count)]
        buf = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(buf)
        values = buf.tolist()
        self.sums = dict(zip(names, values[:-1]))
        self.count = int(round(values[-1]))
