"""``data.on_device``: batches augmented on the device follow the CPU transform's distribution, are seeded,
keep the DataLoader's order and labels, and train (and resume exactly) through the engine."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare
from torch.utils.data import DistributedSampler

from letkd.config import load_config
from letkd.data import create_dataset, get_transform, subset
from letkd.data.device_loader import DeviceLoader, DeviceLoaderError
from letkd.data.memory import InMemoryImageDataset
from letkd.data.transforms import RandomCropFlipNormalize, normalize
from letkd.engine import build_test_loader, build_train_loader
from letkd.engine.distributed import DistInfo
from letkd.pipeline import train_from_config

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)


def _coded_image(size: int = 8, channels: int = 3) -> torch.Tensor:
    """uint8 (1, C, size, size) with every pixel distinct and non-zero, so a crop identifies its offset."""
    return (torch.arange(channels * size * size) % 250 + 1).to(torch.uint8).reshape(1, channels, size, size)


def _draws_cpu(transform, image: torch.Tensor, n: int) -> Counter:
    torch.manual_seed(1)
    return Counter(transform(image[0]).numpy().tobytes() for _ in range(n))


def _draws_device(transform, image: torch.Tensor, n: int, batch: int = 500) -> Counter:
    images = image.expand(batch, -1, -1, -1).contiguous()
    loader = DeviceLoader(InMemoryImageDataset(images, [0] * batch, transform), batch, "cpu")
    loader.generator.manual_seed(2)
    out: Counter = Counter()
    for _ in range(n // batch):
        for x, _label in loader:
            out.update(img.numpy().tobytes() for img in x)
    return out


@pytest.mark.parametrize(
    "padding_mode,flip,channels", [("constant", True, 1), ("reflect", True, 3), ("constant", False, 3)]
)
def test_crops_and_flips_have_the_cpu_transforms_distribution(padding_mode, flip, channels):
    """Every augmented image the device produces is one the CPU transform produces, and the frequencies of
    the (offset, flip) outcomes agree (two-sample chi-square) and are uniform (chi-square)."""
    transform = RandomCropFlipNormalize(8, 2, MEAN, STD, padding_mode=padding_mode, flip=flip)
    image = _coded_image(channels=channels)
    outcomes = 25 * (2 if flip else 1)
    n = 200 * outcomes
    cpu, dev = _draws_cpu(transform, image, n), _draws_device(transform, image, n)
    assert len(cpu) == outcomes  # the coded image makes every (offset, flip) outcome distinct
    assert set(dev) == set(cpu)
    keys = sorted(cpu)
    table = np.array([[cpu[k] for k in keys], [dev[k] for k in keys]])
    assert chi2_contingency(table).pvalue > 1e-3
    assert chisquare(table[1]).pvalue > 1e-3


def test_flip_rate_and_offsets_on_a_ramp():
    """A horizontal ramp reveals the flip (sign of the slope) and the column offset of each crop."""
    ramp = (torch.arange(16) * 10 + 5).to(torch.uint8).expand(1, 1, 16, 16).contiguous()
    transform = RandomCropFlipNormalize(16, 4, (0.0,) * 3, (1 / 255,) * 3)  # identity normalisation
    batch = 4000
    loader = DeviceLoader(
        InMemoryImageDataset(ramp.expand(batch, -1, -1, -1).contiguous(), [0] * batch, transform),
        batch,
        "cpu",
    )
    x, _ = next(iter(loader))
    middle = x[:, 0, 8]  # (B, 16) one row, away from the zero padding rows
    flipped = middle[:, 7] > middle[:, 8]  # columns 7 and 8 of a crop are never padding
    assert abs(flipped.float().mean().item() - 0.5) < 0.03
    assert chisquare(np.bincount(_column_offsets(middle, flipped), minlength=9)).pvalue > 1e-3


def _column_offsets(rows: torch.Tensor, flipped: torch.Tensor) -> np.ndarray:
    """Column offset 0..8 of each crop of the ramp (value 10·c + 5 at column c, 0 in the padding)."""
    rows = torch.where(flipped[:, None], rows.flip(1), rows)
    return ((rows[:, 8] - 5) / 10 - 4).round().long().numpy()  # column 8 holds 10·(8 + j − 4) + 5


def test_per_pixel_mean_and_std_match_the_dataloader_on_digits():
    """Many augmented epochs of digits: per-pixel mean and std of device batches agree with the CPU path."""
    train = create_dataset("digits", "train")
    cfg = load_config(ROOT / "configs/digits/resnet8.yaml", ["data.batch_size=479"])
    info = DistInfo()
    sums = {}
    for on_device in (False, True):
        cfg.data.on_device = on_device
        loader = build_train_loader(train, cfg, info, torch.device("cpu"))
        total = sq = 0.0
        count = 0
        for epoch in range(8):
            loader.sampler.set_epoch(epoch)
            loader.generator.manual_seed(100 + epoch)
            for x, _ in loader:
                total, sq, count = total + x.double().sum(0), sq + (x.double() ** 2).sum(0), count + len(x)
        mean = total / count
        sums[on_device] = (mean, (sq / count - mean**2).sqrt(), count)
    (m0, s0, n), (m1, s1, _) = sums[False], sums[True]
    z = (m1 - m0) / ((s0**2 + s1**2) / n).sqrt().clamp_min(1e-6)
    assert (z.abs() > 4).float().mean() < 0.005, z.abs().max()
    assert (s1 - s0).abs().max() < 0.1
    assert abs(m1.mean() - m0.mean()) < 0.01


def test_order_labels_and_test_images_equal_the_dataloader_path():
    train, test = create_dataset("digits", "train"), create_dataset("digits", "test")
    cfg = load_config(
        ROOT / "configs/digits/resnet8.yaml", ["data.on_device=true", "data.test_batch_size=64"]
    )
    dev_test = build_test_loader(test, cfg, DistInfo(), torch.device("cpu"))
    cfg.data.on_device = False
    cpu_test = build_test_loader(test, cfg, DistInfo(), torch.device("cpu"))
    assert len(dev_test) == len(cpu_test) == 6
    for (xa, ya), (xb, yb) in zip(dev_test, cpu_test):
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)
        assert torch.equal(ya, yb)
    # training labels in the DistributedSampler's order, i.e. the DataLoader's order
    sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(3)
    loader = DeviceLoader(train, 100, "cpu", sampler, drop_last=True)
    labels = torch.cat([y for _, y in loader])
    assert len(loader) == 14 and labels.shape == (1400,)
    assert labels.tolist() == [train.targets[i] for i in list(sampler)[:1400]]


def test_ddp_shards_are_disjoint_and_cover_the_set():
    train = subset(create_dataset("digits", "train"), 300, seed=0)
    seen = []
    for rank in range(3):
        sampler = DistributedSampler(train, num_replicas=3, rank=rank, shuffle=True, seed=0)
        loader = DeviceLoader(train, 25, "cpu", sampler)
        seen.append(sum(len(y) for _, y in loader))
        assert len(loader) == 4
    assert seen == [100, 100, 100]


def test_same_seed_same_batches_other_seed_other_crops():
    train = create_dataset("digits", "train")

    def first_batch(seed: int) -> torch.Tensor:
        loader = DeviceLoader(train, 64, "cpu")
        loader.generator.manual_seed(seed)
        return next(iter(loader))[0]

    assert torch.equal(first_batch(5), first_batch(5))
    assert not torch.equal(first_batch(5), first_batch(6))


def test_unsupported_datasets_and_transforms_are_refused():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(DeviceLoaderError, match="data.on_device=false"):
        DeviceLoader(InMemoryImageDataset(images, [0] * 4, get_transform("tiny_imagenet", "train")), 2, "cpu")
    with pytest.raises(DeviceLoaderError, match="held in memory"):
        DeviceLoader(torch.utils.data.TensorDataset(images.float(), torch.zeros(4)), 2, "cpu")
    loader = DeviceLoader(InMemoryImageDataset(images, [0] * 4, normalize(MEAN, STD)), 3, "cpu")
    assert [len(y) for _, y in loader] == [3, 1]


def test_training_with_on_device_data_learns_and_resumes_exactly(tmp_path):
    args = [
        "data.on_device=true",
        "train.epochs=2",
        "data.batch_size=32",
        "data.train_subset=960",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    cfg = load_config(ROOT / "configs/digits/resnet8.yaml", args)
    full = train_from_config(cfg, tmp_path / "full", device="cpu")
    assert full["status"] == "completed" and full["best_top1"] > 30.0  # chance is 10 %
    first = load_config(ROOT / "configs/digits/resnet8.yaml", [*args, "train.epochs=1"])
    train_from_config(first, tmp_path / "split", device="cpu")
    train_from_config(cfg, tmp_path / "split", resume=True, device="cpu")
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
