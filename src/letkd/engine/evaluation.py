"""Evaluation: top-1 / top-5 accuracy and mean cross-entropy over a test loader (all-reduced under DDP).

Also the two per-batch helpers the training loop shares with it: moving a batch to the device and the
mixed-precision context.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from letkd.engine.metrics import SumMeter, topk_correct
from letkd.utils import tqdm_disable


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in {"bf16", "fp16"}; a no-op context for "off"."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def batch_to_device(
    batch: Any, device: torch.device, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (B, C, H, W), labels (B,))`` of a ``(images, labels, ...)`` batch, on ``device``."""
    images, labels = batch[0], batch[1]
    images = images.to(device, non_blocking=True)
    if channels_last and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.as_tensor(labels).to(device, non_blocking=True)


@torch.inference_mode()
def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    device: torch.device,
    amp: str = "off",
    channels_last: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy of ``forward(images) -> logits (B, classes)``.

    Under DDP the sums are all-reduced, so every rank returns the accuracy on the whole test set.
    """
    meter = SumMeter()
    batches = tqdm(loader, desc="eval", leave=False, file=sys.stderr, disable=tqdm_disable(progress))
    for batch in batches:
        images, labels = batch_to_device(batch, device, channels_last)
        with autocast_context(device, amp):
            logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        correct = topk_correct(logits, labels, (1, 5))
        stats = torch.cat([loss.reshape(1), correct]).tolist()
        meter.add({"loss": stats[0], "top1": stats[1], "top5": stats[2]}, labels.shape[0])
    meter.all_reduce(device)
    return {
        "top1": 100.0 * meter.mean("top1"),
        "top5": 100.0 * meter.mean("top5"),
        "loss": meter.mean("loss"),
        "count": meter.count,
    }


def batch_extras(batch: Any, device: torch.device) -> dict[str, Any]:
    """Entries of a batch's optional third element (a dict, e.g. sample indices) moved to ``device``."""
    if isinstance(batch, (list, tuple)) and len(batch) > 2 and isinstance(batch[2], dict):
        return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch[2].items()}
    return {}
