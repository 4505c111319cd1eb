"""CRD — "Contrastive Representation Distillation" (Tian, Krishnan & Isola, ICLR 2020).

Student and teacher pooled penultimate features ``(B, C)`` go through linear embeddings (L2-normalised,
``feat_dim``); each is scored against the *other* network's momentum memory bank (one row per training
sample) at the sample's own row (positive) and K sampled rows (negatives), ``exp(⟨m_j, e⟩ / nce_t) / Z``
with ``Z`` fixed from the first batch (a buffer, so it is in checkpoints); NCE loss on both sides; then the
banks' rows of the batch move towards the new embeddings (momentum ``nce_m``). Loss
``ce_weight · CE + weight · (L_s + L_t) [+ kd_weight · KD]``.

Batches must carry ``index`` and ``contrast_index`` (:attr:`needs_sample_indices`; the run wraps the
training set in :class:`letkd.data.contrast.ContrastSampleDataset`, which draws the negatives from other
classes' samples like RepDistiller's ``mode='exact'``). The banks are sized from the training set
(``MethodContext.num_train_samples``). Under DDP, buffers follow rank 0 (DDP broadcasts them each step).

Defaults (RepDistiller ``train_student.py``/``run_cifar_distill.sh``: ``--distill crd -r 1 -a 0 -b 0.8``,
``--feat_dim 128 --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --mode exact``): ``weight 0.8``, ``ce_weight 1``,
``kd_weight 0``, ``feat_dim 128``, ``nce_k 16384``, ``nce_t 0.07``, ``nce_m 0.5``. Embeddings and banks
are used in training only: the deployed student has no extra parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.autograd.function import once_differentiable

from letkd.config import ConfigError
from letkd.methods.base import register_method
from letkd.methods.losses import contrast_loss, kd_loss
from letkd.methods.pairs import FeaturePairDistiller, PairParams, global_pool


class Embed(nn.Module):
    """``(B, C) -> (B, D)``: linear map, then each row divided by its L2 norm (no eps, as the reference)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


#: Score by one dense product ``e @ bankᵀ`` when the bank has at most this many rows per sampled column
#: (resnet56 → resnet20 on CIFAR-100, 2 CPU threads: 50,000 rows for 16,385 columns, the dense way 5× faster
#: than gathering the rows; the gathered rows cost ≈ 20× more per column than a dense product per row).
DENSE_ROWS_PER_COLUMN = 16
#: ... and when the dense ``(B, N)`` product has at most this many elements (1 GiB of float32).
DENSE_MAX_ELEMENTS = 2**28
#: Gathered rows per chunk when scoring without the dense product (elements; 32 MiB of float32).
GATHER_CHUNK_ELEMENTS = 2**23


class _BankUpdate:
    """What one call did to one memory bank, so that the backward can use the bank as the forward saw it.

    The scores of a call are read from the bank *before* the call updates its rows ``index``; the backward
    of those scores runs after the update. It puts the old rows back for its own computation and restores
    the new ones afterwards (``B`` rows each way), instead of keeping a copy of the bank. Any other change
    of the bank between the call and the backward is refused.
    """

    def __init__(self, bank: torch.Tensor) -> None:
        self.bank = bank
        self.rows: torch.Tensor | None = None
        self.old: torch.Tensor | None = None
        self.version = bank._version

    def record(self, rows: torch.Tensor, old: torch.Tensor) -> None:
        """The rows ``rows`` of the bank, which held ``old``, were just overwritten."""
        self.rows, self.old, self.version = rows, old, self.bank._version

    @contextmanager
    def as_before(self) -> Iterator[torch.Tensor]:
        """The bank with the rows it held before the update (restored on exit)."""
        if self.bank._version != self.version:
            raise RuntimeError(
                "a CRD memory bank changed between a forward pass and its backward (another forward "
                "pass before backward?): the gradient of its scores can no longer be computed"
            )
        if self.rows is None or self.old is None:
            yield self.bank
            return
        new = self.bank[self.rows]
        self.bank.index_copy_(0, self.rows, self.old)
        try:
            yield self.bank
        finally:
            self.bank.index_copy_(0, self.rows, new)
            self.version = self.bank._version


def dense_positions(num_rows: int, idx: torch.Tensor) -> torch.Tensor | None:
    """Where the sampled entries ``idx (B, K+1)`` lie in a flattened ``(B, num_rows)`` product, when scoring
    by the dense product pays off (see :class:`_SampledDots`); ``None`` when gathered rows are cheaper."""
    b, n = idx.shape
    if num_rows > DENSE_ROWS_PER_COLUMN * n or num_rows * b > DENSE_MAX_ELEMENTS:
        return None
    return (idx + torch.arange(b, device=idx.device).mul_(num_rows).unsqueeze(1)).view(-1)


class _SampledDots(torch.autograd.Function):
    """``dots[b, j] = ⟨bank[idx[b, j]], e[b]⟩`` (float32) without materialising the ``(B, K+1, D)`` rows.

    A bank of N rows scored at ``K+1`` sampled rows per anchor: for ``N`` up to
    :data:`DENSE_ROWS_PER_COLUMN` ``· (K+1)`` one dense product ``e @ bankᵀ`` ``(B, N)`` and a pick of the
    sampled entries; the gradient scatters ``∂L/∂dots`` into a ``(B, N)`` matrix ``G`` (repeated samples add
    up) and returns ``G @ bank``. For larger banks the rows are gathered a few anchors at a time and the
    gradient is one ``embedding_bag`` (weighted sum of the sampled rows). The bank is a constant.
    """

    @staticmethod
    def forward(ctx, e, bank, idx, positions: torch.Tensor | None, update: _BankUpdate) -> torch.Tensor:
        """``e (B, D)``, ``bank (N, D)``, ``idx (B, K+1)``, ``positions`` from :func:`dense_positions`.

        In the bank's dtype even under autocast: the scores are ``exp(dots / 0.07)``, which would turn a
        bfloat16 product's rounding into errors of several percent."""
        e32 = e.to(bank.dtype)
        b, n = idx.shape
        with torch.autocast(bank.device.type, enabled=False):
            if positions is not None:
                dots = torch.mm(e32, bank.T).view(-1).index_select(0, positions).view(b, n)
            else:
                dots = torch.empty(b, n, dtype=bank.dtype, device=bank.device)
                step = max(1, GATHER_CHUNK_ELEMENTS // (n * bank.shape[1]))
                for start in range(0, b, step):
                    chunk = slice(start, start + step)
                    rows = bank.index_select(0, idx[chunk].reshape(-1)).view(-1, n, bank.shape[1])
                    torch.bmm(rows, e32[chunk].unsqueeze(2), out=dots[chunk, :, None])
        ctx.save_for_backward(idx, positions)
        ctx.update, ctx.e_dtype = update, e.dtype
        return dots

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        idx, positions = ctx.saved_tensors
        grad = grad.to(ctx.update.bank.dtype).contiguous()
        with ctx.update.as_before() as bank, torch.autocast(bank.device.type, enabled=False):
            if positions is not None:
                weights = grad.new_zeros(idx.shape[0] * bank.shape[0])
                weights.index_add_(0, positions, grad.view(-1))
                grad_e = weights.view(idx.shape[0], -1) @ bank
            else:
                grad_e = F.embedding_bag(idx, bank, per_sample_weights=grad, mode="sum")
        return grad_e.to(ctx.e_dtype), None, None, None, None


class ContrastMemory(nn.Module):
    """Two momentum banks ``(N, D)`` (``memory_v1``: student embeddings, ``memory_v2``: teacher's) and the
    normalisation constants ``z (2,)`` (−1 until the first call sets them)."""

    def __init__(self, feat_dim: int, num_data: int, temperature: float, momentum: float) -> None:
        super().__init__()
        self.num_data, self.temperature, self.momentum = num_data, temperature, momentum
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_v1", torch.rand(num_data, feat_dim) * 2 * bound - bound)
        self.register_buffer("memory_v2", torch.rand(num_data, feat_dim) * 2 * bound - bound)
        self.register_buffer("z", torch.full((2,), -1.0))

    def forward(
        self, e_s: torch.Tensor, e_t: torch.Tensor, index: torch.Tensor, contrast_index: torch.Tensor
    ):
        """Scores ``(B, K+1)`` of the student anchors against the teacher bank and of the teacher anchors
        against the student bank, from the banks *before* this call; then updates the rows ``index``.

        The scores are ``exp(⟨bank[contrast_index[b, j]], e[b]⟩ / nce_t) / Z`` in float32, computed without
        gathering the sampled rows (see :class:`_SampledDots`); their backward must run before the next call.
        """
        updates = _BankUpdate(self.memory_v1), _BankUpdate(self.memory_v2)
        positions = dense_positions(self.num_data, contrast_index)  # the same for both banks
        s = _SampledDots.apply(e_s, self.memory_v2, contrast_index, positions, updates[1])
        t = _SampledDots.apply(e_t, self.memory_v1, contrast_index, positions, updates[0])
        s, t = torch.exp(s / self.temperature), torch.exp(t / self.temperature)
        with torch.no_grad():
            first = torch.stack([s.mean(), t.mean()]) * self.num_data
            self.z.copy_(torch.where(self.z < 0, first, self.z))  # set once, no host sync
            m = self.momentum
            for bank, e, update in zip((self.memory_v1, self.memory_v2), (e_s, e_t), updates):
                old = bank[index]
                bank.index_copy_(0, index, F.normalize(old * m + e.detach().to(bank.dtype) * (1 - m), dim=1))
                update.record(index, old)
        return s / self.z[0], t / self.z[1]


@register_method("crd")
class CRD(FeaturePairDistiller):
    """Contrastive distillation of pooled penultimate features with momentum memory banks."""

    default_taps = "penultimate"
    needs_sample_indices = True

    class Params(PairParams):
        """``method.params`` of ``crd``; ``None`` taps = the ``penultimate`` tap (pooled)."""

        weight: float = Field(0.8, ge=0)
        kd_weight: float = Field(0.0, ge=0, description="Hinton KD weight (RepDistiller -a)")
        temperature: float = Field(4.0, gt=0)
        feat_dim: int = Field(128, ge=1)
        nce_k: int = Field(16384, ge=1)
        nce_t: float = Field(0.07, gt=0)
        nce_m: float = Field(0.5, ge=0, le=1)

    def __init__(self, student, teacher, params=None, context=None):
        super().__init__(student, teacher, params, context)
        n = self.context.num_train_samples
        if not n:
            raise ConfigError(
                f"{self.method_name}: needs the training-set size (MethodContext.num_train_samples)"
            )
        p = self.params
        self.embed_t = Embed(self.teacher_shapes[0][0], p.feat_dim)
        self.memory = ContrastMemory(p.feat_dim, n, p.nce_t, p.nce_m)

    @property
    def reads_teacher_logits(self) -> bool:
        """Teacher logits are read only for the KD term."""
        return self.params.kd_weight > 0

    @property
    def num_negatives(self) -> int:
        """K, the negatives per sample the training batches must carry."""
        return self.params.nce_k

    def check_pairs(self, student_shapes, teacher_shapes):
        if len(student_shapes) != 1:
            raise ConfigError(f"{self.method_name}: takes one student tap and one teacher tap")

    def make_connector(self, i, student_shape, teacher_shape):
        """The student embedding."""
        return Embed(student_shape[0], self.params.feat_dim)

    def forward_train(self, images, labels, index=None, contrast_index=None, **batch):
        """``index (B,)``, ``contrast_index (B, K+1)`` -> logits, ``{loss_ce, loss_crd[, loss_kd]}``."""
        if index is None or contrast_index is None:
            raise ValueError(
                f"{self.method_name} needs batches with 'index' and 'contrast_index' "
                "(wrap the training set in letkd.data.contrast.ContrastSampleDataset)"
            )
        logits, (s,) = self.student_outputs(images)
        teachers = self.teacher_targets(images)
        e_s = self.connectors[0](global_pool(s))
        e_t = self.embed_t(global_pool(teachers[0]))
        out_s, out_t = self.memory(e_s, e_t, index, contrast_index)
        n, p = self.memory.num_data, self.params
        losses = {
            "loss_ce": p.ce_weight * F.cross_entropy(logits, labels),
            "loss_crd": p.weight * (contrast_loss(out_s, n) + contrast_loss(out_t, n)),
        }
        if p.kd_weight > 0:
            losses["loss_kd"] = p.kd_weight * kd_loss(logits, teachers[-1], p.temperature)
        return logits, losses

    @classmethod
    def example_params(cls) -> dict:
        """Few negatives and a small embedding."""
        return {"nce_k": 8, "feat_dim": 16}
