"""The Distiller interface every method implements, and the method registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from letkd.config import ConfigError
from letkd.fold import fold_batchnorm
from letkd.methods.features import teacher_logits

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


def check_standalone_student(method: str | None) -> None:
    """Raise ``ValueError`` if checkpoints of ``method`` cannot be used as the student alone."""
    cls = _METHODS.get(method or "") if method else None
    if method and cls is None:
        import letkd.methods  # noqa: F401

        cls = _METHODS.get(method)
    if cls is not None and not cls.standalone_student:
        raise ValueError(
            f"a {method!r} run deploys more than its student network (see docs/methods.md); "
            "exporting or evaluating the student alone would give wrong predictions, so it is refused"
        )


def list_methods() -> list[str]:
    """Names of all registered methods."""
    import letkd.methods  # noqa: F401

    return sorted(_METHODS)


@dataclass
class MethodContext:
    """What a method needs to know about the run besides its params.

    ``input_size`` is one image ``(C, H, W)``; ``supervision`` holds the teacher-side supervision modules
    (``Codebook`` / ``SubclassCodebook``), one per entry of ``params["layers"]`` (``None`` where a layer
    has none), or is ``None`` for methods without layers. ``compile_teacher``: compile the frozen teacher
    (config ``teacher.compile``; see :meth:`Distiller.compile_teacher`). ``teacher_channels_last``: store
    the teacher's weights in channels-last memory format (config ``teacher.channels_last``).
    ``fold_teacher_batchnorm``: fold the teacher's BatchNorm layers into its convolutions where no tap
    reads between them (config ``teacher.fold_batchnorm``; :func:`letkd.fold.fold_batchnorm`).
    ``num_train_samples``: size of the training set (methods with a per-sample memory, e.g. CRD).
    """

    num_classes: int
    input_size: tuple[int, int, int] = (3, 32, 32)
    epochs: int = 1
    supervision: list[nn.Module | None] | None = field(default=None)
    compile_teacher: bool = False
    teacher_channels_last: bool = True
    fold_teacher_batchnorm: bool = True
    num_train_samples: int | None = None


class MethodParams(BaseModel):
    """Base of every method's ``Params`` model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def _format_params_error(method: str, exc: ValidationError) -> str:
    lines = [f"invalid params for method {method!r}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  unknown key 'method.params.{loc}'")
        else:
            lines.append(f"  method.params.{loc}: {err['msg']}")
    return "\n".join(lines)


_FREEZING = {"freezing": True}


def compile_untapped_submodules(model: nn.Module, taps: Sequence[str], prefix: str = "") -> list[str]:
    """Compile (inductor, freezing) the ``forward`` of the largest submodules of ``model`` that hold no tap.

    A submodule whose path is a tap keeps its own hooks (they run around ``forward``), but no tap may lie
    strictly inside a compiled one; submodules without parameters are left eager. Changes ``model`` in
    place and returns the paths compiled.
    """
    compiled = []
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        if any(t.startswith(path + ".") for t in taps):
            compiled += compile_untapped_submodules(child, taps, path + ".")
        elif next(child.parameters(), None) is not None:
            child.forward = torch.compile(child.forward, dynamic=False, options=_FREEZING)
            compiled.append(path)
    return compiled


class Distiller(nn.Module):
    """A training method: owns the student, the (frozen) teacher and any auxiliary modules.

    ``forward_train(images, labels, **batch) -> (logits, {loss_name: scalar tensor})``; the trainer
    back-propagates the sum of the losses. ``forward_test(images) -> logits`` uses the student only.
    The teacher (if any) is kept in eval mode and never receives gradients.
    """

    method_name = "base"
    #: the method's parameter schema (``method.params`` of a config); subclasses define their own
    Params: ClassVar[type[MethodParams]] = MethodParams
    #: whether :meth:`from_config` refuses to build without a teacher
    requires_teacher: ClassVar[bool] = False
    #: whether the method reads only the teacher's logits (then ``teacher.compile`` may compile it whole)
    uses_teacher_logits_only: ClassVar[bool] = False
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
            raise ConfigError(_format_params_error(cls.method_name, exc)) from None

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
        that read features) taps whose shapes do not fit — before any training starts.
        """
        parsed = cls.parse_params(params)
        if cls.requires_teacher and teacher is None:
            raise ConfigError(
                f"method {cls.method_name!r} needs a teacher: set the config's 'teacher' section"
            )
        distiller = cls.build(student, teacher, parsed, context)
        if context.fold_teacher_batchnorm and distiller.teacher is not None:
            distiller.fold_teacher_batchnorm()
        if context.teacher_channels_last and distiller.teacher is not None:
            # mkldnn/cuDNN run channels-last convolutions without layout conversions (resnet56 inference
            # ≈ 20 % faster on CPU); the teacher's outputs are the same up to float rounding
            distiller.teacher.to(memory_format=torch.channels_last)
        if context.compile_teacher:
            distiller.compile_teacher()
        return distiller

    @classmethod
    def build(
        cls, student: nn.Module, teacher: nn.Module | None, params: MethodParams, context: MethodContext
    ) -> Distiller:
        """Construct from validated params; methods with their own ``Params`` take ``(params, context)``."""
        if cls.Params is MethodParams:
            return cls(student, teacher)
        return cls(student, teacher, params=params, context=context)

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.epoch = 0
        self._compiled_teacher: list[Callable[[torch.Tensor], torch.Tensor]] = []  # not a submodule
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def fold_teacher_batchnorm(self) -> list[str]:
        """Fold the frozen teacher's BatchNorm layers into its convolutions, in place; return their paths.

        Pairs where a tap the method reads (``self.teacher_paths``) is the convolution or the BatchNorm itself
        are left alone (taps at enclosing blocks see the same outputs), so every tapped output keeps its
        value; a method that reads features but does not name its taps folds nothing. The teacher computes
        the same function (up to float rounding) with one pass less per BatchNorm; the folded BatchNorm
        entries leave the teacher's state_dict.
        """
        if self.teacher is None:
            return []
        paths = [] if self.uses_teacher_logits_only else getattr(self, "teacher_paths", None)
        if paths is None:
            return []
        return fold_batchnorm(self.teacher, keep=paths)

    def compile_teacher(self) -> None:
        """Run the frozen teacher through ``torch.compile`` (inductor with freezing) from now on.

        Freezing treats the teacher's weights as constants: BatchNorm is folded into the convolutions and
        the weights are pre-packed, which made a resnet56 forward about 2.7× faster on CPU; outputs are
        equal up to float rounding. Compilation happens at the first training step (about 30 s for
        resnet56 on two cores) and again for a new batch size.

        Methods that read only the teacher's logits (:attr:`uses_teacher_logits_only`) compile the whole
        teacher. Methods that read feature taps (their module paths in ``self.teacher_paths``) compile, in
        place, the ``forward`` of every submodule with parameters that contains no tap inside it, so the
        taps' hooks still fire: the passed-in teacher module is changed (its outputs are not).
        """
        if self.teacher is None:
            raise ConfigError(f"teacher.compile: method {self.method_name!r} has no teacher")
        if self.uses_teacher_logits_only:
            self._compiled_teacher = [torch.compile(self.teacher, dynamic=False, options=_FREEZING)]
            return
        paths = getattr(self, "teacher_paths", None)
        if paths is None:
            raise ConfigError(
                f"teacher.compile: method {self.method_name!r} does not say which teacher modules it reads"
            )
        compile_untapped_submodules(self.teacher, paths)

    def run_teacher(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``images`` under inference mode (compiled if :meth:`compile_teacher`)."""
        teacher = self._compiled_teacher[0] if self._compiled_teacher else self.teacher
        return teacher_logits(teacher, images)

    def train(self, mode: bool = True) -> Distiller:
        """Switch train/eval mode; the teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each training epoch with its 0-based index."""
        self.epoch = epoch

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
