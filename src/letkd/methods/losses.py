"""Loss functions of the usual distillation baselines, as the reference loss zoos compute them.

Each function reproduces the value of the implementation everyone compares with (the CRD/RepDistiller
``distiller_zoo`` and mdistiller's DKD); ``tests/test_baseline_losses.py`` checks them against
``fixtures/baseline_losses_reference.npz`` at ``rtol=1e-5``, ``tests/test_modern_methods.py`` checks DIST and
logit standardization against ``fixtures/modern_methods_reference.npz``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: ``KL(softmax(t/T) || softmax(s/T)) * T**2``, summed over classes, averaged over the batch.

    ``logits_*``: ``(B, classes)``.
    """
    log_p_s = F.log_softmax(logits_student / temperature, dim=1)
    p_t = F.softmax(logits_teacher / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * temperature**2 / logits_student.shape[0]


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logit standardization (Sun et al., CVPR 2024): each row of ``(B, classes)`` minus its mean, divided
    by ``1e-7 +`` its unbiased standard deviation (the z-score the LSKD code applies before the softmax).
    Computed in float32 at least (``1e-7`` is below half precision's resolution)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    mean = logits.mean(dim=1, keepdim=True)
    return (logits - mean) / (1e-7 + logits.std(dim=1, keepdim=True))


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (``(N, D)`` -> ``(N,)``): cosine
    of the centred rows, ``eps`` added to the product of their norms."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    logits_student: torch.Tensor, logits_teacher: torch.Tensor, beta: float, gamma: float, temperature: float
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022) on ``(B, classes)`` logits, as its ``dist_kd.py`` computes it.

    With ``p = softmax(z / T)``: inter-class relation = ``1 −`` mean over the batch of the Pearson
    correlation of the student's and teacher's rows; intra-class relation = the same over the class columns.
    Loss ``T² · (beta · inter + gamma · intra)``.
    """
    p_s = F.softmax(logits_student / temperature, dim=1)
    p_t = F.softmax(logits_teacher / temperature, dim=1)
    inter = 1.0 - _pearson_rows(p_s, p_t).mean()
    intra = 1.0 - _pearson_rows(p_s.t(), p_t.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def match_grids(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two ``(B, C, H, W)`` maps to the other's height (RepDistiller's rule).

    Like the reference, only the heights are compared and the pooled grid is square.
    """
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention map ``(B, H*W)`` of a ``(B, C, H, W)`` feature: L2-normalised channel mean of ``f**p``."""
    return F.normalize(feature.pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) for one feature pair.

    Mean squared difference of the attention maps; the larger grid is pooled to the smaller first.
    """
    f_s, f_t = match_grids(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019) for one feature pair.

    Row-L2-normalised ``(B, B)`` Gram matrices of the flattened features; squared Frobenius distance / B².
    """
    bsz = f_s.shape[0]
    f_s = f_s.reshape(bsz, -1)
    f_t = f_t.reshape(bsz, -1)
    g_s = F.normalize(f_s @ f_s.t(), dim=1)
    g_t = F.normalize(f_t @ f_t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (bsz * bsz)


def dkd_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``, each ``* T**2`` / batch.

    TCKD: KL between the binary (target, non-target) distributions. NCKD: KL between the distributions
    over the non-target classes (the target logit is masked out with a -1000 offset, as in mdistiller).
    ``logits_*``: ``(B, classes)``, ``labels``: ``(B,)``.
    """
    gt_mask = F.one_hot(labels.reshape(-1), logits_student.shape[1]).to(logits_student.dtype)
    p_s = F.softmax(logits_student / temperature, dim=1)
    p_t = F.softmax(logits_teacher / temperature, dim=1)
    binary_s = torch.stack([(p_s * gt_mask).sum(1), (p_s * (1 - gt_mask)).sum(1)], dim=1)
    binary_t = torch.stack([(p_t * gt_mask).sum(1), (p_t * (1 - gt_mask)).sum(1)], dim=1)
    bsz = labels.shape[0]
    tckd = F.kl_div(torch.log(binary_s), binary_t, reduction="sum") * temperature**2 / bsz
    log_q_s = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    q_t = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * temperature**2 / bsz
    return alpha * tckd + beta * nckd


def pkt_loss(embed_student: torch.Tensor, embed_teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on ``(B, D)`` embeddings.

    Cosine similarities mapped to [0, 1] and row-normalised into conditional distributions; KL with ``eps``,
    averaged over the ``(B, B)`` matrix.
    """

    def conditional(x: torch.Tensor) -> torch.Tensor:
        x = x / (x.norm(dim=1, keepdim=True) + eps)
        x = torch.nan_to_num(x, nan=0.0)
        sim = (x @ x.t() + 1.0) / 2.0
        return sim / sim.sum(dim=1, keepdim=True)

    p_s, p_t = conditional(embed_student), conditional(embed_teacher)
    return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))


def _pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances between the rows of ``(B, D)``, zero diagonal, ``(B, B)``."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))


def _pairwise_angles(e: torch.Tensor) -> torch.Tensor:
    """Cosines of the angles formed by every triplet of rows of ``(B, D)``, flattened ``(B**3,)``."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_loss(
    embed_student: torch.Tensor,
    embed_teacher: torch.Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    """Relational KD (Park et al., CVPR 2019): smooth-L1 on mean-normalised distances and on angles."""
    s = embed_student.reshape(embed_student.shape[0], -1)
    t = embed_teacher.reshape(embed_teacher.shape[0], -1).detach()
    d_t = _pairwise_distances(t)
    d_t = d_t / d_t[d_t > 0].mean()
    d_s = _pairwise_distances(s)
    d_s = d_s / d_s[d_s > 0].mean()
    loss_distance = F.smooth_l1_loss(d_s, d_t)
    loss_angle = F.smooth_l1_loss(_pairwise_angles(s), _pairwise_angles(t))
    return distance_weight * loss_distance + angle_weight * loss_angle


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Neuron selectivity transfer (Huang & Wang, 2017): squared MMD with the kernel ``(a·b)**2``.

    Each channel's flattened spatial map is L2-normalised; the larger grid is pooled to the smaller first.
    """
    f_s, f_t = match_grids(f_s, f_t)
    f_s = F.normalize(f_s.flatten(2), dim=2)
    f_t = F.normalize(f_t.flatten(2), dim=2)

    def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.transpose(1, 2)).pow(2)

    teacher_term = poly_kernel(f_t, f_t).mean().detach()
    return teacher_term + poly_kernel(f_s, f_s).mean() - 2 * poly_kernel(f_s, f_t).mean()


def vid_loss(pred_mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, eps: float = 1e-5):
    """Variational information distillation (Ahn et al., CVPR 2019): Gaussian NLL of the teacher map.

    ``pred_mean``, ``target``: ``(B, C, H, W)``; ``log_scale``: ``(C,)`` with variance
    ``softplus(log_scale) + eps``. Mean over all elements of ``½((μ − t)²/σ² + log σ²)`` (no ½ log 2π).
    """
    var = (F.softplus(log_scale) + eps).view(1, -1, 1, 1)
    return (0.5 * ((pred_mean - target).pow(2) / var + var.log())).mean()


def ab_loss(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Activation-boundary margin loss (Heo et al., AAAI 2019), summed over all elements.

    Where the teacher pre-activation ``target`` is off (≤ 0) the student's ``source`` is pushed below
    ``−margin``; where it is on, above ``+margin``. Only the sign of ``target`` matters.
    """
    on = target > 0
    push_down = (source + margin).pow(2) * ((source > -margin) & ~on)
    push_up = (source - margin).pow(2) * ((source <= margin) & on)
    return (push_down + push_up).sum()


def fsp_matrices(features: list[torch.Tensor]) -> list[torch.Tensor]:
    """FSP matrices (Yim et al., CVPR 2017) of consecutive maps: ``(B, C_{i+1}, C_i)`` for each pair.

    ``G[b, a, c] = mean_positions f_{i+1}[b, a] · f_i[b, c]``; the larger grid is pooled to the smaller.
    """
    out = []
    for bottom, top in zip(features[:-1], features[1:]):
        top, bottom = match_grids(top, bottom)
        out.append(torch.bmm(top.flatten(2), bottom.flatten(2).transpose(1, 2)) / top[0, 0].numel())
    return out


def fsp_losses(students: list[torch.Tensor], teachers: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-pair mean squared distance of the student's and teacher's FSP matrices."""
    return [(g_s - g_t).pow(2).mean() for g_s, g_t in zip(fsp_matrices(students), fsp_matrices(teachers))]


def contrast_loss(scores: torch.Tensor, num_data: int, eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE loss (Tian et al., ICLR 2020) of ``(B, K+1)`` scores, column 0 the positive.

    With ``c = K / num_data``: ``−(1/B)·[Σ_i log(P_i0/(P_i0 + c + ε)) + Σ_{i,k≥1} log(c/(P_ik + c + ε))]``.
    """
    k = scores.shape[1] - 1
    c = k / num_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + c + eps))
    negative = torch.log(c / (scores[:, 1:] + c + eps))
    return -(positive.sum() + negative.sum()) / scores.shape[0]
