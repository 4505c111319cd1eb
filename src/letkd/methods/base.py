"""The Distiller interface every method implements, and the method registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from letkd.config import ConfigError, format_validation_error
from letkd.plugins import Registry
from letkd.teacher import FrozenTeacher

METHODS: Registry[type[Distiller]] = Registry("method", "letkd.methods")


def register_method(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: make a :class:`Distiller` subclass available to configs under ``name``."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        METHODS.add(name, cls)
        cls.method_name = name
        return cls

    return deco


def get_method(name: str) -> type[Distiller]:
    """Return the Distiller class registered as ``name`` (built in, from a config's ``imports:`` or an entry
    point of group ``letkd.methods``); an unknown name raises a ``KeyError`` listing the known names."""
    import letkd.methods  # noqa: F401  (registers the built-in methods)

    return METHODS.get(name)


def list_methods() -> list[str]:
    """Names of all registered methods."""
    import letkd.methods  # noqa: F401

    return METHODS.names()


@dataclass
class MethodContext:
    """What a method needs to know about the run besides its params.

    ``input_size`` is one image ``(C, H, W)``; ``supervision`` holds the teacher-side supervision modules
    built for the method's :meth:`Distiller.supervision_specs` (one per spec, in order), or is ``None`` for
    methods without. ``num_train_samples``: size of the training set (memory banks). The ``teacher_*``
    flags are the config's ``teacher.compile``, ``teacher.channels_last`` and ``teacher.fold_batchnorm``,
    applied by :meth:`letkd.teacher.FrozenTeacher.prepare` once the method has declared its taps.
    """

    num_classes: int
    input_size: tuple[int, int, int] = (3, 32, 32)
    supervision: list[nn.Module] | None = field(default=None)
    num_train_samples: int | None = None
    compile_teacher: bool = False
    teacher_channels_last: bool = True
    fold_teacher_batchnorm: bool = True


class MethodParams(BaseModel):
    """Base of every method's ``Params`` model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Distiller(nn.Module):
    """A training method: owns the student, the frozen teacher and any auxiliary modules.

    ``forward_train(images, labels, **batch) -> (logits, {loss_name: scalar tensor})``; the trainer
    back-propagates the sum of the losses. ``forward_test(images) -> logits`` uses the student only.
    The teacher (if any) is a :class:`~letkd.teacher.FrozenTeacher` (``self.teacher``): a method declares
    the taps it reads with ``self.teacher.add_taps(...)`` in its constructor and calls
    ``self.teacher.logits(x)`` / ``self.teacher.features(x)`` in ``forward_train``.
    """

    method_name = "base"
    #: the method's parameter schema (``method.params`` of a config); subclasses define their own
    Params: ClassVar[type[MethodParams]] = MethodParams
    #: whether :meth:`from_config` refuses to build without a teacher
    requires_teacher: ClassVar[bool] = False
    #: whether training batches must carry sample indices: the training set is then wrapped so that
    #: ``forward_train`` receives ``index (B,)`` and ``contrast_index (B, K+1)`` (see
    #: :class:`letkd.data.contrast.ContrastSampleDataset`; ``num_negatives`` gives K)
    needs_sample_indices: ClassVar[bool] = False
    #: whether the trained student alone is the deployed model (``False``: the method adds a head that
    #: ``letkd export`` / ``letkd eval`` cannot rebuild from the student's checkpoint, e.g. SimKD)
    standalone_student: ClassVar[bool] = True

    @classmethod
    def parse_params(cls, params: dict[str, Any] | MethodParams | None) -> MethodParams:
        """Validate ``method.params`` with :attr:`Params`; errors name the method and the offending keys."""
        if isinstance(params, cls.Params):
            return params
        try:
            return cls.Params.model_validate(dict(params or {}))
        except ValidationError as exc:
            heading = f"invalid params for method {cls.method_name!r}"
            text = format_validation_error(exc, heading, "method.params.", model=cls.Params)
            raise ConfigError(text) from None

    @classmethod
    def supervision_specs(cls, params: MethodParams) -> list[Any]:
        """The teacher-side supervision this method needs (:mod:`letkd.supervision.spec`), in the order
        :attr:`MethodContext.supervision` will hold the fitted modules; none by default."""
        return []

    @classmethod
    def example_params(cls) -> dict[str, Any]:
        """Small ``method.params`` for tests on digits-sized models (the defaults unless overridden)."""
        return {}

    @classmethod
    def from_config(
        cls,
        student: nn.Module,
        teacher: nn.Module | None,
        params: dict[str, Any] | MethodParams | None,
        context: MethodContext,
    ) -> Distiller:
        """Build the method from a config's ``method.params`` (validated here) and the run's context.

        Raises :class:`letkd.config.ConfigError` for invalid params, a missing teacher, or (in methods
        that read features) taps whose shapes do not fit — before any training starts. The teacher's speed
        settings are applied once the method has declared its taps.
        """
        parsed = cls.parse_params(params)
        if cls.requires_teacher and teacher is None:
            raise ConfigError(
                f"method {cls.method_name!r} needs a teacher: set the config's 'teacher' section"
            )
        distiller = cls(student, teacher, params=parsed, context=context)
        if distiller.teacher is not None:
            distiller.teacher.prepare(
                fold_batchnorm=context.fold_teacher_batchnorm,
                channels_last=context.teacher_channels_last,
                compile=context.compile_teacher,
            )
        return distiller

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        params: MethodParams | None = None,
        context: MethodContext | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = (
            teacher if isinstance(teacher, FrozenTeacher) or teacher is None else FrozenTeacher(teacher)
        )
        self.params = params if params is not None else self.Params()
        self.context = context if context is not None else MethodContext(num_classes=0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each training epoch with its 0-based index."""
        self.epoch = epoch

    def stage_starts(self) -> list[int]:
        """0-based epochs at which the method begins a new training stage (none by default; AB/FSP: the
        first epoch after their init stage). With ``train.fresh_optimizer_per_stage`` the trainer starts a
        new optimizer there."""
        return []

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
