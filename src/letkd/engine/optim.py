"""The optimizer (SGD) and its learning-rate schedule.

The learning rate is set once at the start of every epoch or, with ``schedule.per_step``, before every
step from the fractional epoch ``epoch + step / steps_per_epoch``.

The paper's recipe (SPEC §4.4) is a look-up table by epoch: ``lr · gamma^(number of milestones passed)``;
``cosine`` and ``constant`` are the usual alternatives, each optionally preceded by a linear warm-up.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from letkd.config import TrainConfig


def build_optimizer(params: list[nn.Parameter], train: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum/Nesterov; weight decay on every trained parameter (the paper's choice, SPEC Q9)
    unless ``train.decay_norm_and_bias`` is false, which exempts 1-D parameters (biases, norms, scales)."""
    kwargs = {"lr": train.lr, "momentum": train.momentum, "nesterov": train.nesterov and train.momentum > 0}
    if train.decay_norm_and_bias:
        return torch.optim.SGD(params, weight_decay=train.weight_decay, **kwargs)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD([g for g in groups if g["params"]], **kwargs)


def lr_at_epoch(train: TrainConfig, epoch: float) -> float:
    """The learning rate at ``epoch`` (0-based; fractional for per-step schedules) under ``train.schedule``.

    ``step``: ``lr · gamma^k`` where ``k`` counts the milestones ``<= epoch`` (lr 0.05, milestones
    150/180/210, gamma 0.1 → epoch 149: 0.05, 150: 0.005, 180: 5e-4, 210: 5e-5).
    ``cosine``: from ``lr`` down to ``min_lr`` over the epochs after the warm-up.
    Warm-up: during the first ``warmup_epochs`` epochs the value is scaled by
    ``(epoch + 1) / (warmup_epochs + 1)``. A fractional ``epoch`` interpolates all of these (a ``step``
    schedule changes at the milestone itself).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    sched = train.schedule
    if sched.type == "step":
        passed = bisect.bisect_right(sorted(sched.milestones), epoch)
        lr = train.lr * sched.gamma**passed
    elif sched.type == "cosine":
        span = max(1, train.epochs - sched.warmup_epochs)
        progress = min(1.0, max(0, epoch - sched.warmup_epochs) / span)
        lr = sched.min_lr + (train.lr - sched.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # constant
        lr = train.lr
    if epoch < sched.warmup_epochs:
        lr *= (epoch + 1) / (sched.warmup_epochs + 1)
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
