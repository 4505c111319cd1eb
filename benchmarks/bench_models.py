"""CPU forward throughput of the CIFAR zoo: resnet20 vs resnet56 (batch 64, 32×32, eval, no grad).

Also reports the cost of reading the penultimate tap through a forward hook (resnet20). The variants are
timed in interleaved rounds (median per variant) so that load changes on a shared machine hit all alike.
Run: ``python -m benchmarks.run_all models``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from letkd.models import create_model, get_taps


def interleaved_images_per_second(
    variants: dict[str, Callable[[], object]], images: int, rounds: int = 7, warmup: int = 2
) -> dict[str, float]:
    """Median images/s of each no-argument forward in ``variants``, timed round-robin."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(warmup + rounds):
        for name, run in variants.items():
            t0 = time.perf_counter()
            run()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: images / statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    """Print images/s for resnet20, resnet56 and resnet20 with a tap hook, and their ratios."""
    torch.manual_seed(0)
    batch = torch.randn(64, 3, 32, 32)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch 64 × 3×32×32, eval, no grad"
    )

    r20 = create_model("resnet20").eval()
    r20_hooked = create_model("resnet20").eval()
    r56 = create_model("resnet56").eval()
    shapes = []
    r20_hooked.get_submodule(get_taps(r20_hooked)["penultimate"]).register_forward_hook(
        lambda _m, _i, out: shapes.append(out.shape)
    )
    with torch.inference_mode():
        ips = interleaved_images_per_second(
            {
                "resnet20": lambda: r20(batch),
                "resnet56": lambda: r56(batch),
                "resnet20 + tap hook": lambda: r20_hooked(batch),
            },
            images=batch.shape[0],
        )
    for name, value in ips.items():
        print(f"{name:24s} {value:10.1f} images/s")
    print(f"ratio resnet20/resnet56  {ips['resnet20'] / ips['resnet56']:10.2f}x  (MAC ratio 126M/41M ≈ 3.1x)")
    print(f"ratio hooked/plain       {ips['resnet20 + tap hook'] / ips['resnet20']:10.3f}")


if __name__ == "__main__":
    main()
