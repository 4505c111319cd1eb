"""Data-loading throughput: letkd's fused crop/flip/normalise train transform vs torchvision's chain.

Single thread (as in one DataLoader worker), one image at a time, images/s:
- CIFAR-style: ``letkd.data.get_transform("cifar100", "train")`` (RandomCrop 32, padding 4, reflect →
  RandomHorizontalFlip → normalise) against ``torchvision.transforms`` v1 and v2 chains doing the same on
  ``uint8 (3, 32, 32)`` tensors;
- Fashion-MNIST (if its files are found): ``dataset[i]`` of the letkd training set (zero padding) against
  the same in-memory images served through the torchvision v2 chain.
The variants are timed round-robin in blocks of ``LETKD_BENCH_IMAGES`` images (default 2000), median of 5.
Run: ``python -m benchmarks.run_all data``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision import transforms as tv1
from torchvision.transforms import v2

from benchmarks._common import env_int, format_table, interleaved_median
from letkd.data import DatasetNotFoundError, create_dataset, dataset_info, get_transform

ROUNDS = 5


def torchvision_v1(mean: Sequence[float], std: Sequence[float], padding_mode: str) -> tv1.Compose:
    """RandomCrop(32, 4) → RandomHorizontalFlip → float in [0, 1] → Normalize, torchvision v1 on tensors."""
    return tv1.Compose(
        [
            tv1.RandomCrop(32, padding=4, padding_mode=padding_mode),
            tv1.RandomHorizontalFlip(),
            tv1.ConvertImageDtype(torch.float32),
            tv1.Normalize(mean, std),
        ]
    )


def torchvision_v2(mean: Sequence[float], std: Sequence[float], padding_mode: str) -> v2.Compose:
    """The same chain with ``torchvision.transforms.v2``."""
    return v2.Compose(
        [
            v2.RandomCrop(32, padding=4, padding_mode=padding_mode),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def over_images(
    transform: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor
) -> Callable[[], None]:
    """A call that applies ``transform`` to every image of ``images`` (N, 3, H, W) in turn."""

    def run() -> None:
        for img in images:
            transform(img)

    return run


def over_items(dataset, count: int) -> Callable[[], None]:
    """A call that reads ``dataset[0 … count−1]``."""

    def run() -> None:
        for i in range(count):
            dataset[i]

    return run


def report(title: str, calls: dict[str, Callable[[], None]], count: int, baseline: str) -> None:
    """Time ``calls`` (each handles ``count`` images); print images/s and the speed-up over ``baseline``."""
    timings = interleaved_median(calls, repeats=ROUNDS, warmup=1)
    ips = {name: count / t.wall for name, t in timings.items()}
    rows = [[name, f"{v:,.0f}", f"{v / ips[baseline]:.2f}×"] for name, v in ips.items()]
    print(f"\n{title}")
    print(format_table(["pipeline", "images/s", f"vs {baseline}"], rows))


def main() -> None:
    """Print single-thread images/s of the fused transform and the torchvision chains, and their ratios."""
    count = env_int("LETKD_BENCH_IMAGES", 2000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        info = dataset_info("cifar100")
        images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)
        fused = get_transform("cifar100", "train")
        tv1_chain = torchvision_v1(info.mean, info.std, "reflect")
        tv2_chain = torchvision_v2(info.mean, info.std, "reflect")
        assert fused(images[0]).shape == tv2_chain(images[0]).shape == (3, 32, 32)
        print(f"torch {torch.__version__}, 1 thread, {count} images per timed block, median of {ROUNDS}")
        report(
            "CIFAR-style train transform on uint8 (3, 32, 32) tensors (reflect padding):",
            {
                "letkd fused": over_images(fused, images),
                "torchvision v1 chain": over_images(tv1_chain, images),
                "torchvision v2 chain": over_images(tv2_chain, images),
            },
            count,
            baseline="torchvision v2 chain",
        )
        try:
            ours = create_dataset("fashion_mnist", "train")
        except DatasetNotFoundError as exc:
            print(f"\nFashion-MNIST skipped: {exc}")
            return
        f_info = dataset_info("fashion_mnist")
        theirs = create_dataset(
            "fashion_mnist", "train", transform=torchvision_v2(f_info.mean, f_info.std, "constant")
        )
        report(
            "Fashion-MNIST training items, dataset[i] (zero padding):",
            {
                "letkd dataset[i]": over_items(ours, count),
                "torchvision v2 dataset[i]": over_items(theirs, count),
            },
            count,
            baseline="torchvision v2 dataset[i]",
        )
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
