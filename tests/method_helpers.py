"""Shared helpers of the method tests: a tiny resnet8 pair, random supervision, numpy re-derivations."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from letkd.methods import MethodContext, get_method
from letkd.models import create_model
from letkd.supervision import Codebook, SubclassCodebook

NC = 5  # classes
SIZE = (3, 8, 8)  # resnet8 at 8 px: stage2 (32, 4, 4), layer3 = layer3.0 (64, 2, 2)
K = 6  # codebook templates
SPC = 2  # sub-classes per class



def _pair() -> tuple[nn.Module, nn.Module]:
    student = create_model("resnet8", NC)
    teacher = create_model("resnet8", NC)
    return student, teacher


def _codebook(dim: int = 64, k: int = K) -> Codebook:
    return Codebook(torch.rand(k, dim) * 2)


def _subclass(dim: int = 64, lda: int = 3) -> SubclassCodebook:
    g = torch.Generator().manual_seed(3)
    s = NC * SPC
    scores = torch.softmax(torch.randn(s, s, generator=g), 1)
    return SubclassCodebook(torch.randn(dim, 4, generator=g), torch.rand(dim, generator=g),
                            torch.randn(s, lda, generator=g), scores, NC)


CODEBOOK_LAYER = {"kind": "codebook", "student_tap": "penultimate", "teacher_tap": "penultimate",
                  "num_templates": K}
SUBCLASS_LAYER = {"kind": "subclass", "student_tap": "intermediate", "teacher_tap": "intermediate",
                  "subclasses_per_class": SPC, "lda_components": 3}


def _context(supervision=None) -> MethodContext:
    return MethodContext(num_classes=NC, input_size=SIZE, supervision=supervision)


def _build(name: str, params: dict, supervision=None, pair=None):
    student, teacher = pair or _pair()
    return get_method(name).from_config(student, teacher, params, _context(supervision))


def _batch(b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, *SIZE), torch.arange(b) % NC


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _ce(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-_log_softmax(logits, 1)[np.arange(len(labels)), labels].mean())


def _kl_positions(p: np.ndarray, scores: np.ndarray) -> float:
    """KL(p ‖ softmax(scores)) over axis 1 of (B, K, H, W), averaged over B·H·W positions."""
    logq = _log_softmax(scores, 1)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return float((plogp - p * logq).sum() / (p.size / p.shape[1]))


def _capture(module: nn.Module, store: dict, key: str, inputs: bool = False):
    if inputs:
        return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0]))
    return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, out))


def _teacher_logits(d, images):
    with torch.no_grad():
        return _np(d.teacher(images))
