"""One student forward and one teacher forward per training step, shared by the parts of a composition.

A composed method (:mod:`letkd.methods.compose`) runs several methods' ``forward_train`` on the same batch.
Each part reads the student and the teacher its own way — ``self.student(images)``, forward hooks on the
student's modules (:class:`letkd.taps.FeatureTaps`), the scores of grafted KD layers, ``self.teacher.logits``
/ ``features`` — so the sharing happens underneath them, without changing any method:

- :class:`SharedTeacher` is the :class:`~letkd.teacher.FrozenTeacher` of every part. Within
  :meth:`SharedTeacher.sharing`, the first read of a batch runs one whole forward (the logits and the union
  of the parts' taps) and every later read of the same ``images`` tensor is served from it.
- :class:`StudentPass` makes the student run once per step. Within :meth:`StudentPass.step`, the first
  ``student(images)`` is an ordinary forward that records each submodule call (inputs and output); a later
  call on the same ``images`` tensor *replays* that record: the forward hooks (and pre-hooks) registered
  since the recorded forward began — a later part's feature taps — are called with the recorded tensors,
  in the order the modules ran, and the recorded output is returned. Hooks that were already there (KD-layer
  grafts, their forward tracker) are not run again, so the grafted layers' scores stay those of the one
  forward. BatchNorm statistics are therefore updated once per step, as with a single method.

Guards: a replayed hook may only observe (a hook that returns a replacement value raises
:class:`CompositionError`), and a recorded tensor changed in place later in the forward (the input of an
in-place ReLU, say) raises :class:`CompositionError` instead of handing a part wrong values. A call on
other inputs runs an ordinary forward. After the first step only the modules that later parts hook are
recorded; a module hooked for the first time later gets one ordinary extra forward and is recorded from
the next step on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from letkd.teacher import FrozenTeacher


class CompositionError(RuntimeError):
    """A part of a composed method reads the student in a way one shared forward cannot serve."""


class SharedTeacher(FrozenTeacher):
    """A :class:`FrozenTeacher` whose reads within :meth:`sharing` cost one forward per batch.

    ``forwards`` counts the teacher forwards run while sharing (what a composition saves shows there).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.forwards = 0
        self._sharing = False
        self._batch: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]] | None = None

    @contextlib.contextmanager
    def sharing(self) -> Iterator[None]:
        """Within the block, every read of the same ``images`` tensor comes from one forward."""
        self._sharing = True
        try:
            yield
        finally:
            self._sharing, self._batch = False, None

    def _once(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self._batch is None or self._batch[0] is not images:
            self.forwards += 1
            if self.tap_paths:
                logits, feats = super().logits_and_features(images)
            else:
                logits, feats = super().logits(images), {}
            self._batch = (images, logits, feats)
        return self._batch[1], self._batch[2]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits ``(B, classes)``; within :meth:`sharing` from the batch's one forward."""
        return self._once(images)[0] if self._sharing else super().logits(images)

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{tap path: (B, C, H, W)}``; within :meth:`sharing` from the batch's one forward."""
        return dict(self._once(images)[1]) if self._sharing else super().features(images)

    def logits_and_features(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and tapped features; within :meth:`sharing` from the batch's one forward."""
        if not self._sharing:
            return super().logits_and_features(images)
        logits, feats = self._once(images)
        return logits, dict(feats)


@dataclass
class _Call:
    """One recorded hook point: a module's start (``output`` unset) or end, with tensor versions."""

    module: nn.Module
    args: tuple
    kwargs: dict
    output: Any = None
    is_end: bool = False
    versions: list[tuple[torch.Tensor, int]] = field(default_factory=list)


@dataclass
class _Recording:
    args: tuple
    kwargs: dict
    output: Any
    calls: list[_Call]
    known: dict[int, tuple[set[int], set[int]]]  # id(module) -> hook ids present when the forward began
    recorded: set[int]  # id(module) of the modules whose calls were recorded


def _versions(values: Any) -> list[tuple[torch.Tensor, int]]:
    items = values if isinstance(values, (tuple, list)) else (values,)
    return [(t, t._version) for t in items if isinstance(t, torch.Tensor) and not t.is_inference()]


def _new_hooks(module: nn.Module, known: tuple[set[int], set[int]], end: bool) -> list[tuple[int, Any]]:
    hooks = module._forward_hooks if end else module._forward_pre_hooks
    return [(i, h) for i, h in hooks.items() if i not in known[1 if end else 0]]


class StudentPass:
    """Runs ``student`` once per :meth:`step` and replays that forward to later callers (module docs)."""

    def __init__(self, student: nn.Module) -> None:
        self.student = student
        self.forwards = 0  # ordinary student forwards run within steps
        self._recording: _Recording | None = None
        self._hooked: set[int] = set()  # id(module) of the modules later parts hooked so far
        self._record_all = True  # record every module: first step, and after a module newly hooked
        self._widen = False  # a module was hooked for the first time in this step
        self._base: type[nn.Module] | None = None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Within the block, ``student(images)`` runs the network once for every caller."""
        student = self.student
        self._base = type(student)
        student.__class__ = _replaying_class(self._base)
        student.__dict__["_letkd_pass"] = self
        try:
            yield
        finally:
            student.__class__ = self._base
            student.__dict__.pop("_letkd_pass", None)
            if self._recording is not None:
                self._record_all = self._widen
            self._recording, self._widen = None, False

    def call(self, args: tuple, kwargs: dict) -> Any:
        """``student(*args, **kwargs)`` within a step: the one forward, or its replay."""
        rec = self._recording
        if rec is None:
            return self._record(args, kwargs)
        if not _same(args, rec.args) or not _same(tuple(kwargs.values()), tuple(rec.kwargs.values())):
            return self._ordinary(args, kwargs)
        hooked = {id(m) for m in self.student.modules() if m is not self.student and _has_new_hooks(m, rec)}
        self._hooked |= hooked
        if hooked - rec.recorded:  # hooked for the first time: an ordinary forward now, recorded from now on
            self._widen = True
            return self._ordinary(args, kwargs)
        return self._replay(rec, args, kwargs)

    # -- the one forward -----------------------------------------------------------------------------

    def _ordinary(self, args: tuple, kwargs: dict) -> Any:
        assert self._base is not None
        self.forwards += 1
        return self._base.__call__(self.student, *args, **kwargs)

    def _record(self, args: tuple, kwargs: dict) -> Any:
        student = self.student
        known = {id(m): (set(m._forward_pre_hooks), set(m._forward_hooks)) for m in student.modules()}
        calls: list[_Call] = []
        recorded: set[int] = set()
        handles = []

        def on_start(module, a, kw):
            calls.append(_Call(module, a, kw, versions=_versions(a)))

        def on_end(module, a, kw, out):
            calls.append(_Call(module, a, kw, out, True, _versions(out)))

        for module in student.modules():
            if module is student or not (self._record_all or id(module) in self._hooked):
                continue
            recorded.add(id(module))
            handles.append(module.register_forward_pre_hook(on_start, with_kwargs=True, prepend=True))
            handles.append(module.register_forward_hook(on_end, with_kwargs=True))
        try:
            output = self._ordinary(args, kwargs)
        finally:
            for handle in handles:
                handle.remove()
        self._recording = _Recording(args, kwargs, output, calls, known, recorded)
        return output

    # -- its replay ------------------------------------------------------------------------------------

    def _replay(self, rec: _Recording, args: tuple, kwargs: dict) -> Any:
        root = self.student
        known_root = rec.known[id(root)]
        for hook_id, hook in _new_hooks(root, known_root, False):
            _observe(root, hook_id, hook, False, args, kwargs, None)
        try:
            for call in rec.calls:
                hooks = _new_hooks(call.module, rec.known.get(id(call.module), (set(), set())), call.is_end)
                if not hooks:
                    continue
                if any(tensor._version != version for tensor, version in call.versions):
                    raise CompositionError(
                        f"a later part reads the {'output' if call.is_end else 'input'} of a "
                        f"{type(call.module).__name__} that the student's forward changed in place "
                        "afterwards; list the part that reads it first in method.params.parts"
                    )
                for hook_id, hook in hooks:
                    _observe(call.module, hook_id, hook, call.is_end, call.args, call.kwargs, call.output)
        except BaseException:
            for hook_id, hook in _new_hooks(root, known_root, True):
                if hook_id in root._forward_hooks_always_called:
                    _call_hook(root, hook_id, hook, True, args, kwargs, rec.output)
            raise
        for hook_id, hook in _new_hooks(root, known_root, True):
            _observe(root, hook_id, hook, True, args, kwargs, rec.output)
        return rec.output


def _has_new_hooks(module: nn.Module, rec: _Recording) -> bool:
    known = rec.known.get(id(module), (set(), set()))
    return bool(_new_hooks(module, known, False) or _new_hooks(module, known, True))


def _call_hook(module: nn.Module, hook_id: int, hook: Any, end: bool, args, kwargs, output) -> Any:
    if end:
        if hook_id in module._forward_hooks_with_kwargs:
            return hook(module, args, kwargs, output)
        return hook(module, args, output)
    if hook_id in module._forward_pre_hooks_with_kwargs:
        return hook(module, args, kwargs)
    return hook(module, args)


def _observe(module: nn.Module, hook_id: int, hook: Any, end: bool, args, kwargs, output) -> None:
    """Call one replayed hook; it may only observe."""
    if _call_hook(module, hook_id, hook, end, args, kwargs, output) is not None:
        raise CompositionError(
            f"a later part's hook on a {type(module).__name__} changes what the module computes; one shared "
            "student forward cannot serve it (list that part first in method.params.parts)"
        )


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


_REPLAYING: dict[type, type] = {}


def _replaying_class(base: type[nn.Module]) -> type[nn.Module]:
    """``base`` with ``__call__`` going through the step's :class:`StudentPass` (made once per class)."""
    if base not in _REPLAYING:

        def __call__(self, *args, **kwargs):
            return self.__dict__["_letkd_pass"].call(args, kwargs)

        _REPLAYING[base] = type(base.__name__, (base,), {"__call__": __call__, "__module__": base.__module__})
    return _REPLAYING[base]
