"""Cost of the KD layer: resnet20 with a K=4096 KD layer at layer3 vs plain resnet20 (CPU, forward+backward).

Also times the KD layer alone (with its KL loss) against a straightforward implementation that normalises
every cosine-conv input explicitly, and ``template_kl`` against the same loss through plain autograd.
Host memory as the trainer sets it by default (``LETKD_BENCH_SYSTEM_MALLOC=1``: glibc defaults).
Run: ``python -m benchmarks.run_all layer``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks._common import trainer_memory_setting
from letkd.graft import graft, graft_scores
from letkd.layers import KDLayer
from letkd.models import create_model
from letkd.template_loss import template_kl

BATCH, K, WARMUP, REPEATS = 64, 4096, 2, 5


def median_time(step: Callable[[], None], warmup: int = WARMUP, repeats: int = REPEATS) -> float:
    """Median wall time of ``step()`` in seconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def naive_kd_layer(layer: KDLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same KD layer computed by normalising both cosine-conv inputs explicitly."""

    def cosine(conv, inp):
        w = F.normalize(conv.weight, dim=1) * conv.scale
        return F.conv2d(F.normalize(inp, dim=1), w)

    scores = cosine(layer.templates, x)
    return x + layer.alpha * cosine(layer.values, F.relu(layer.bn(scores))), scores


def autograd_kl(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The same KL written with plain autograd."""
    log_q = F.log_softmax(scores, dim=1)
    return (torch.xlogy(targets, targets) - targets * log_q).sum() / (scores.numel() // scores.shape[1])


def main() -> None:
    """Print forward+backward times and their ratios."""
    memory = trainer_memory_setting()
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32)
    y = torch.randint(0, 100, (BATCH,))
    # channels-last, as the KD layer's scores and the codebook's targets are
    channels_last = torch.channels_last
    targets = torch.softmax(torch.randn(BATCH, K, 8, 8) * 5, dim=1).contiguous(memory_format=channels_last)

    plain = create_model("resnet20", num_classes=100).train()
    grafted = create_model("resnet20", num_classes=100).train()
    graft(grafted, "layer3", KDLayer(64, K))

    def plain_step() -> None:
        plain.zero_grad(set_to_none=True)
        F.cross_entropy(plain(x), y).backward()

    def grafted_step() -> None:
        grafted.zero_grad(set_to_none=True)
        logits = grafted(x)
        loss = F.cross_entropy(logits, y) + template_kl(graft_scores(grafted)["layer3"], targets)
        loss.backward()

    t_plain = median_time(plain_step)
    t_grafted = median_time(grafted_step)
    print(f"threads: {torch.get_num_threads()}, batch {BATCH}, 32x32, K={K} at layer3 (64x8x8), {memory}")
    print(f"resnet20 plain          fwd+bwd: {t_plain * 1e3:8.1f} ms")
    print(f"resnet20 + KD layer+KL  fwd+bwd: {t_grafted * 1e3:8.1f} ms   ratio {t_grafted / t_plain:.2f}x")

    layer = KDLayer(64, K).train()
    feats = torch.randn(BATCH, 64, 8, 8, requires_grad=True)

    def layer_step(fn) -> Callable[[], None]:
        def step() -> None:
            layer.zero_grad(set_to_none=True)
            feats.grad = None
            x_hat, scores = fn(feats)
            (x_hat.square().mean() + template_kl(scores, targets)).backward()

        return step

    t_layer = median_time(layer_step(layer))
    t_naive = median_time(layer_step(lambda f: naive_kd_layer(layer, f)))
    print(f"KD layer alone (+KL)    fwd+bwd: {t_layer * 1e3:8.1f} ms   ({t_layer / t_plain:.2f}x plain)")
    print(f"naive KD layer (+KL)    fwd+bwd: {t_naive * 1e3:8.1f} ms   naive/ours {t_naive / t_layer:.2f}x")

    scores = torch.randn(BATCH, K, 8, 8).contiguous(memory_format=channels_last).requires_grad_(True)

    def loss_step(fn) -> Callable[[], None]:
        def step() -> None:
            scores.grad = None
            fn(scores, targets).backward()

        return step

    t_kl = median_time(loss_step(template_kl))
    t_kl_autograd = median_time(loss_step(autograd_kl))
    ratio = t_kl_autograd / t_kl
    print(f"template_kl             fwd+bwd: {t_kl * 1e3:8.1f} ms   autograd/ours {ratio:.2f}x")


if __name__ == "__main__":
    main()
