"""The implementations that the fused template loss and CRD's dense scoring replaced, kept for timing only.

``methods_step`` runs them beside the current ones in the same process (rows ``<label>_prev``), so that a
before/after comparison comes from one run on one machine. What they compute is the same (the fixture
tests pin the current code; these were checked against the same fixtures before they were replaced):

- the template KL on a materialised ``(B, K, H, W)`` target map (the supervision module's ``targets``,
  written into a buffer reused across steps), keeping ``softmax(scores)`` and the targets for the backward;
- CRD's scores from the gathered memory rows: ``bank[contrast_index]`` ``(B, K+1, D)`` per bank, then a
  batched product.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from letkd.methods import Distiller


class _PreviousTemplateKL(torch.autograd.Function):
    """KL(P ‖ softmax(a)) over contiguous ``(N, K)`` rows / N; saves softmax(a) and P for the backward."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores, dim=-1)
        lse = scores.amax(dim=-1).sub_(probs.amax(dim=-1).log_())
        terms = targets.clamp_min(torch.finfo(targets.dtype).tiny).log_().sub_(scores).mul_(targets)
        rows = terms.sum(dim=-1).addcmul_(lse, targets.sum(dim=-1))
        loss = (rows.sum(dtype=torch.float64) / scores.shape[0]).to(scores.dtype)
        ctx.save_for_backward(probs, targets)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        probs, targets = ctx.saved_tensors
        return torch.sub(probs, targets).mul_(grad / probs.shape[0]), None


def previous_template_kl(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The previous ``template_kl`` on a target map (float32 scores)."""
    rows = [t.movedim(1, -1).contiguous().view(-1, t.shape[1]) for t in (scores, targets)]
    return _PreviousTemplateKL.apply(*rows)


def _template_forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
    """letkd / quest ``forward_train`` with materialised targets and the previous loss."""
    targets = self.targets(images, labels)
    if hasattr(self, "handles"):  # letkd: scores read from the grafted KD layers
        logits = self.student(images)
        scores = [h.scores for h in self.handles]
    else:  # quest: template heads on the tapped student features
        from letkd.methods.features import student_features

        logits, feats = student_features(self.student, self.student_paths, images)
        scores = [head(feats[path]) for path, head in zip(self.student_paths, self.heads)]
    losses = {"loss_ce": self.params.ce_weight * F.cross_entropy(logits, labels)}
    for name, layer, s, target in zip(self.loss_names, self.params.layers, scores, targets):
        losses[name] = layer.weight * previous_template_kl(s, target)
    return logits, losses


def _gathered_memory_forward(self, e_s, e_t, index, contrast_index):
    """CRD's ``ContrastMemory.forward`` scoring the gathered ``(B, K+1, D)`` rows of each bank."""
    with torch.no_grad():
        rows_v1 = self.memory_v1[contrast_index]
        rows_v2 = self.memory_v2[contrast_index]
    s = torch.exp(torch.bmm(rows_v2, e_s.unsqueeze(2)).squeeze(2) / self.temperature)
    t = torch.exp(torch.bmm(rows_v1, e_t.unsqueeze(2)).squeeze(2) / self.temperature)
    with torch.no_grad():
        first = torch.stack([s.mean(), t.mean()]) * self.num_data
        self.z.copy_(torch.where(self.z < 0, first, self.z))
        m = self.momentum
        for bank, e in ((self.memory_v1, e_s), (self.memory_v2, e_t)):
            bank.index_copy_(0, index, F.normalize(bank[index] * m + e.detach() * (1 - m), dim=1))
    return s / self.z[0], t / self.z[1]


#: registered method → how to turn a distiller of it into its previous implementation
def use_previous_implementation(distiller: Distiller) -> Distiller:
    """Switch ``distiller`` (letkd, quest, crd, crd_kd) to the implementation it had before; in place."""
    name = distiller.method_name
    if name in ("letkd", "quest"):
        distiller.forward_train = types.MethodType(_template_forward_train, distiller)
    elif name in ("crd", "crd_kd"):
        distiller.memory.forward = types.MethodType(_gathered_memory_forward, distiller.memory)
    else:
        raise ValueError(f"no previous implementation of {name!r} is kept")
    return distiller


#: methods that have a previous implementation here
HAS_PREVIOUS = ("letkd", "quest", "crd", "crd_kd")
