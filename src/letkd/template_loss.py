"""The letKD distillation loss on template scores and its logging metrics.

:func:`template_kl` takes the teacher's targets either as a ``(B, K, H, W)`` probability map or as a
:class:`TemplateTargets` that produces them a few locations at a time: :class:`CodebookTargets` (softmax of
``−τ‖f − ρ_k‖²``, letKD-1 / QuEST) and :class:`TableTargets` (rows of a fixed distribution table picked per
location, letKD-2's sub-classes). With the latter two the ``B·K·H·W`` target map is never built: per chunk
of locations the targets, the log-softmax of the scores, the KL terms and the gradient
``(softmax(a) − P) / N`` are computed while the chunk is in cache, and the gradient — the only full-size
tensor kept for the backward — is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

#: locations per chunk ≈ this many elements / K (1 MiB of float32: the chunk's four buffers stay in cache)
CHUNK_ELEMENTS = 2**18

_softmax_out = torch.ops.aten._softmax.out
_log_softmax_out = torch.ops.aten._log_softmax.out
_log_softmax_backward_out = torch.ops.aten._log_softmax_backward_data.out


class TemplateTargets:
    """Per-location target distributions ``(N, K)`` over templates, produced a chunk of locations at a time.

    Rows are locations in ``(b, h, w)`` order, as the scores' rows (``scores.movedim(1, -1)``).
    """

    num_rows: int
    num_templates: int

    def prepare(self, dtype: torch.dtype, scale: float) -> None:
        """Called once per loss before :meth:`fill`: the dtype the loss computes in, the factor of ``P``."""

    def fill(self, start: int, stop: int, probs: torch.Tensor, log_probs: torch.Tensor) -> None:
        """Write ``scale · P`` of rows ``start:stop`` into ``probs`` ``(n, K)`` and ``log P`` into
        ``log_probs`` (entries of ``P`` below the smallest normal float may use its logarithm instead:
        they are multiplied by ``P``)."""
        raise NotImplementedError


def _clamped_log(p: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``log max(p, tiny)``: entries below the smallest normal float (1.2e-38) use its logarithm, an error
    below 2e-36 per entry once multiplied by ``p`` (``torch.xlogy`` would be exact but runs a scalar loop on
    CPU)."""
    return torch.clamp_min(p, torch.finfo(p.dtype).tiny, out=out).log_()


class _DenseTargets(TemplateTargets):
    """Targets given as ``(N, K)`` rows."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows
        self.num_rows, self.num_templates = rows.shape

    def prepare(self, dtype, scale):
        self.rows, self.scale = self.rows.to(dtype), scale

    def fill(self, start, stop, probs, log_probs):
        p = self.rows[start:stop]
        torch.mul(p, self.scale, out=probs)
        _clamped_log(p, log_probs)


class CodebookTargets(TemplateTargets):
    """Soft assignments ``softmax_k(−τ‖f − ρ_k‖²)`` of feature rows to K centres (letKD-1, QuEST; SPEC §2).

    Args:
        features: teacher features ``(B, D, H, W)`` (detached; any float dtype).
        centers: ``(K, D)`` K-means centres.
        temperature: τ.

    The logits are ``τ(2 f·ρ_k − ‖ρ_k‖²)`` (``‖f‖²`` is the same for every centre of a row), one matrix
    product per chunk.
    """

    def __init__(self, features: torch.Tensor, centers: torch.Tensor, temperature: float) -> None:
        d = features.shape[1]
        if centers.dim() != 2 or centers.shape[1] != d:
            raise ValueError(f"features have {d} channels, the centres have shape {tuple(centers.shape)}")
        self.features = features.detach().to(centers.device).movedim(1, -1).reshape(-1, d)
        self.centers, self.temperature = centers, float(temperature)
        self.num_rows, self.num_templates = self.features.shape[0], centers.shape[0]

    def prepare(self, dtype, scale):
        centers = self.centers.to(dtype)
        self.features, self._centers_t, self._bias = self.features.to(dtype), centers.T, centers.pow(2).sum(1)
        self.scale = scale

    def fill(self, start, stop, probs, log_probs):
        tau = self.temperature
        logits = torch.addmm(
            self._bias, self.features[start:stop], self._centers_t, beta=-tau, alpha=2 * tau, out=log_probs
        )
        _softmax_out(logits, 1, False, out=probs)
        # log P = logits − lse; at a row's maximum m the softmax is exp(m − lse) ≥ 1/K, its own row maximum,
        # so lse = m − log max_k P is well conditioned (no second exp pass)
        lse = logits.amax(1, keepdim=True).sub_(probs.amax(1, keepdim=True).log_())
        logits.sub_(lse)
        probs.mul_(self.scale)


class TableTargets(TemplateTargets):
    """Target rows picked from a fixed table: location ``n`` gets ``table[index[n]]`` (letKD-2; SPEC §3).

    Args:
        table: ``(S, K)`` distributions (letKD-2: the sub-class score matrix, S = K).
        index: ``(N,)`` the row of ``table`` for each location.
    """

    def __init__(self, table: torch.Tensor, index: torch.Tensor) -> None:
        if table.dim() != 2 or index.dim() != 1:
            raise ValueError(
                f"expected a (S, K) table and (N,) index, got {tuple(table.shape)}, {tuple(index.shape)}"
            )
        self.table, self.index = table, index.to(table.device)
        self.num_rows, self.num_templates = index.shape[0], table.shape[1]

    def prepare(self, dtype, scale):
        table = self.table.to(dtype)
        self._scaled, self._log = table * scale, _clamped_log(table, torch.empty_like(table))

    def fill(self, start, stop, probs, log_probs):
        index = self.index[start:stop]
        torch.index_select(self._scaled, 0, index, out=probs)
        torch.index_select(self._log, 0, index, out=log_probs)


def _in_parallel_chunks(run: Callable[[list[int]], None], starts: list[int], device: torch.device) -> None:
    """``run`` over the chunk starts, split among the CPU's intra-op threads, one chunk per thread at a time.

    Each chunk's operations are small (they fit in cache): run with the usual intra-op parallelism, every
    one of them would be a parallel region of its own, and on a machine with more busy threads than cores
    each region's barrier waits for a descheduled thread (measured: 10× slower than the unfused loss on two
    oversubscribed cores). Here each thread runs whole chunks with intra-op parallelism off, so the threads
    only meet once, at the end. On other devices, and with one thread, the chunks run in order.
    """
    threads = min(torch.get_num_threads(), len(starts)) if device.type == "cpu" else 1
    if threads <= 1:
        with torch.no_grad():
            run(starts)
        return
    before = torch.get_num_threads()

    def worker(i: int) -> None:
        with torch.no_grad():
            run(starts[i::threads])

    torch.set_num_threads(1)  # read by each new thread at its first operation, and by MKL
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(worker, range(threads)))
    finally:
        torch.set_num_threads(before)


class _FusedTemplateKL(torch.autograd.Function):
    """KL(P ‖ softmax(a)) over the last axis of ``(N, K)`` score rows, divided by ``N``; targets constant.

    Forward, per chunk of rows (which stays in cache): ``p = −P/N`` and ``log P`` from ``targets``,
    ``log softmax(a)``; the row terms ``Σ_k p (log P − log softmax(a))`` (each row reduced on its own over K
    terms, rows summed in float64: one float32 sum over all N·K terms would lose about three digits on large
    high-entropy maps); the gradient rows ``p − softmax(a)·Σ_k p = (softmax(a)·Σ_k P − P) / N`` (ATen's
    log-softmax backward). The backward only scales that gradient by the incoming one.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, targets: TemplateTargets) -> torch.Tensor:
        n_rows, k = scores.shape
        dtype = torch.promote_types(scores.dtype, torch.float32)
        scale = -1.0 / max(n_rows, 1)
        scores = scores.detach()
        with torch.autocast(scores.device.type, enabled=False):
            targets.prepare(dtype, scale)
            grad = torch.empty_like(scores, memory_format=torch.contiguous_format)
            row_terms = torch.empty(n_rows, dtype=dtype, device=scores.device)
            step = max(1, min(n_rows, CHUNK_ELEMENTS // max(k, 1)))

            def run(starts: list[int]) -> None:
                buffers = [torch.empty(step, k, dtype=dtype, device=scores.device) for _ in range(3)]
                if grad.dtype != dtype:
                    buffers.append(torch.empty(step, k, dtype=dtype, device=scores.device))
                for start in starts:
                    stop = min(start + step, n_rows)
                    p, log_p, log_q, *g = (b[: stop - start] for b in buffers)
                    targets.fill(start, stop, p, log_p)
                    _log_softmax_out(scores[start:stop].to(dtype), 1, False, out=log_q)
                    torch.sum(log_p.sub_(log_q).mul_(p), 1, out=row_terms[start:stop])
                    _log_softmax_backward_out(p, log_q, 1, dtype, out=g[0] if g else grad[start:stop])
                    if g:
                        grad[start:stop].copy_(g[0])

            _in_parallel_chunks(run, list(range(0, n_rows, step)), scores.device)
        ctx.save_for_backward(grad)
        return (row_terms.sum(dtype=torch.float64) / (scale * n_rows)).to(dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        (grad,) = ctx.saved_tensors
        # the usual case (a weight of 1 in front of the loss, on the CPU) needs no pass over the map
        if grad_loss.device.type != "cpu" or float(grad_loss) != 1.0:
            grad = grad * grad_loss.to(grad.dtype)
        return grad, None


def _check_pair(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.shape != targets.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must have the same shape "
            "(B, K, H, W)"
        )
    if scores.dim() < 2:
        raise ValueError(f"expected (B, K, ...) tensors, got shape {tuple(scores.shape)}")


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``(B, K, *)`` → ``(B·…, K)`` rows; no copy for channels-last maps (KD-layer scores)."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def template_kl(scores: torch.Tensor, targets: torch.Tensor | TemplateTargets) -> torch.Tensor:
    """KL(targets ‖ softmax(scores)) over the template axis, averaged over all B·H·W positions.

    ``L = (1/N) Σ_n Σ_k P[n,k] (log P[n,k] − log softmax(a_n)_k)`` with ``0·log 0 = 0`` and ``N = B·H·W``
    (PyTorch ``kl_div(..., reduction="batchmean")`` with every position as a batch row).

    Args:
        scores: template logits ``(B, K, H, W)`` (pre-BN scores of a KD layer); any ``(B, K, *)`` works.
        targets: probabilities ``(B, K, H, W)`` that sum to 1 over ``K`` (the teacher's soft assignments),
            or a :class:`TemplateTargets` producing them (then the map is never built).

    Returns:
        a scalar tensor. The computation runs in at least float32 even for half-precision scores; the
        gradient is ``(softmax(scores) − P) / N``, computed in the forward pass.
    """
    if scores.dim() < 2:
        raise ValueError(f"expected (B, K, ...) scores, got shape {tuple(scores.shape)}")
    if isinstance(targets, TemplateTargets):
        n = scores.numel() // scores.shape[1] if scores.shape[1] else 0
        if (targets.num_rows, targets.num_templates) != (n, scores.shape[1]):
            raise ValueError(
                f"scores {tuple(scores.shape)} give {n} locations × {scores.shape[1]} templates, the targets "
                f"{targets.num_rows} × {targets.num_templates}"
            )
        return _FusedTemplateKL.apply(_rows(scores), targets)
    _check_pair(scores, targets)
    if targets.requires_grad:  # rare: differentiate through the targets as well, with plain autograd
        dtype = torch.promote_types(scores.dtype, torch.float32)
        p = targets.to(dtype)
        positions = scores.numel() // scores.shape[1]
        log_q = F.log_softmax(scores.to(dtype), dim=1)
        return (torch.xlogy(p, p) - p * log_q).sum() / positions
    return _FusedTemplateKL.apply(_rows(scores), _DenseTargets(_rows(targets).contiguous()))


def template_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of positions where ``argmax_k scores`` equals ``argmax_k targets`` (scalar, no grad)."""
    _check_pair(scores, targets)
    with torch.no_grad():
        return (scores.argmax(1) == targets.argmax(1)).float().mean()


def target_confidence(targets: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``max_k targets`` (the reference's "mean_assign_dist"), scalar, no grad."""
    with torch.no_grad():
        return targets.amax(1).float().mean()
