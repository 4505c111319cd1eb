"""The Distiller interface every method implements, and the method registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

_METHODS: dict[str, type[Distiller]] = {}


def register_method(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: make a :class:`Distiller` subclass available to configs under ``name``."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name].__name__}")
        _METHODS[name] = cls
        cls.method_name = name
        return cls

    return deco


def get_method(name: str) -> type[Distiller]:
    """Return the Distiller class registered as ``name``; raise listing the known names otherwise."""
    import letkd.methods  # noqa: F401  (registers the built-in methods)

    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}") from None


def list_methods() -> list[str]:
    """Names of all registered methods."""
    import letkd.methods  # noqa: F401

    return sorted(_METHODS)


class Distiller(nn.Module):
    """A training method: owns the student, the (frozen) teacher and any auxiliary modules.

    ``forward_train(images, labels, **batch) -> (logits, {loss_name: scalar tensor})``; the trainer
    back-propagates the sum of the losses. ``forward_test(images) -> logits`` uses the student only.
    The teacher (if any) is kept in eval mode and never receives gradients.
    """

    method_name = "base"

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> Distiller:
        """Switch train/eval mode; the teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward_train(
        self, images: torch.Tensor, labels: torch.Tensor, **batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return student logits ``(B, classes)`` and the named losses of this method."""
        raise NotImplementedError

    def forward_test(self, images: torch.Tensor) -> torch.Tensor:
        """Student logits ``(B, classes)`` for evaluation."""
        return self.student(images)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, **batch):
        """``forward_train`` in training mode (needs labels), ``forward_test`` otherwise."""
        if self.training:
            if labels is None:
                raise ValueError("labels are required in training mode")
            return self.forward_train(images, labels, **batch)
        return self.forward_test(images)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer updates: everything except the teacher."""
        teacher_ids = {id(p) for p in self.teacher.parameters()} if self.teacher is not None else set()
        for p in self.parameters():
            if p.requires_grad and id(p) not in teacher_ids:
                yield p

    def extra_parameters(self) -> int:
        """Number of trainable parameters beyond the bare student that stay in the deployed model."""
        return 0
