"""Engine overhead: images/s of the trainer's training loop vs a bare PyTorch loop doing the same work.

Both train resnet20 (batch 64, random 32×32 images, 100 classes) on the CPU from the same DataLoader
in the same process: forward, cross-entropy, backward, SGD step. The engine adds the Distiller call,
per-step statistics, the NaN check, per-epoch seeding and its progress bookkeeping (bar hidden).
They run alternately in rounds so that a change in machine load affects both alike.
"""

from __future__ import annotations

import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from letkd.config import config_from_dict
from letkd.engine import Trainer, build_test_loader, build_train_loader
from letkd.engine.distributed import DistInfo
from letkd.methods.vanilla import Vanilla
from letkd.models import create_model

BATCH = 64
WARMUP_STEPS = 3
ROUNDS = 5
STEPS_PER_ROUND = 6  # 30 measured steps per side


def bare_loop(model, optimizer, loader, steps: int) -> float:
    """Seconds for ``steps`` plain training steps."""
    model.train()
    t0 = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        if step >= steps:
            break
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
    return time.perf_counter() - t0


def main() -> None:
    """Print images/s of both loops and the engine's overhead ratio (target <= 5 %)."""
    torch.manual_seed(0)
    n = BATCH * (WARMUP_STEPS + STEPS_PER_ROUND)
    data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 100, (n,)))
    cfg = config_from_dict(
        {
            "data": {"batch_size": BATCH, "num_workers": 0},
            "model": {"name": "resnet20", "num_classes": 100},
            "train": {"epochs": 1, "lr": 0.05, "progress": False, "tensorboard": False},
        }
    )
    device, info = torch.device("cpu"), DistInfo()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            Vanilla(create_model("resnet20", 100)),
            cfg,
            run_dir,
            build_train_loader(data, cfg, info, device),
            build_test_loader(data, cfg, info, device),
            device,
        )
        bare_model = create_model("resnet20", 100)
        bare_opt = torch.optim.SGD(
            bare_model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        bare_loader = DataLoader(data, batch_size=BATCH, shuffle=True, drop_last=True)

        def engine_run(steps: int) -> float:
            trainer.cfg.train.max_steps_per_epoch = steps
            t0 = time.perf_counter()
            trainer.train_epoch(0)
            return time.perf_counter() - t0

        engine_run(WARMUP_STEPS)
        bare_loop(bare_model, bare_opt, bare_loader, WARMUP_STEPS)
        engine_s = bare_s = 0.0
        for _ in range(ROUNDS):
            engine_s += engine_run(STEPS_PER_ROUND)
            bare_s += bare_loop(bare_model, bare_opt, bare_loader, STEPS_PER_ROUND)
    images = ROUNDS * STEPS_PER_ROUND * BATCH
    engine_ips, bare_ips = images / engine_s, images / bare_s
    print(
        f"resnet20, batch {BATCH}, {ROUNDS * STEPS_PER_ROUND} steps each, {torch.get_num_threads()} threads"
    )
    print(f"bare PyTorch loop : {bare_ips:8.1f} images/s")
    print(f"letkd engine      : {engine_ips:8.1f} images/s")
    ratio = bare_ips / engine_ips
    print(f"engine overhead   : {ratio - 1:+.1%} (time ratio engine/bare {ratio:.3f}; target <= 5%)")


if __name__ == "__main__":
    main()
