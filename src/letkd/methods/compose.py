"""Composition — several registered methods trained together on one student and one teacher.

```yaml
method:
  name: compose
  params:
    parts:
      - {method: at, params: {weight: 1000.0}}
      - {method: kd, weight: 1.0, params: {temperature: 1.0, kd_weight: 0.5}}
    ce_weight: null        # null: the CE term of the first part that has one, as that part weighs it
```

Each part is a method with its own ``params`` (validated by that method) and a ``weight`` that multiplies its
distillation losses. The loss is ``CE + Σ_parts weight · (the part's losses except its CE)``: the
cross-entropy is counted once — the first part's ``loss_ce`` (its own ``ce_weight``), or
``ce_weight · CE`` when ``ce_weight`` is set. The other losses are logged with the part's name:
``loss_<part>_<loss>`` (``loss_at_kd``, ``loss_letkd_kd_layer3``). Part names default to the method name;
give ``name`` to compose a method with itself.

One teacher forward and one student forward per step serve every part
(:mod:`letkd.methods.shared_pass`): the teacher runs once for the union of the parts' taps, and the student
once, later parts reading its features through a replay of that forward. The logits of a step and the
prediction at test time are the first part's. The parts keep their state apart — checkpoint keys
``parts.<part>.*`` (a KD layer grafted into the student is part of the student, as usual) — and the
teacher-side supervision of every part is fitted for it (the parts' specs in order).

Composing one method is that method, loss for loss and gradient for gradient. Examples: AT+KD (Table 2 of
the letKD paper), FitNet + a KD layer (Table 6), DKD + letKD-1.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError
from torch import nn

from letkd.config import ConfigError, format_validation_error
from letkd.methods.base import Distiller, MethodContext, MethodParams, get_method, register_method
from letkd.methods.shared_pass import SharedTeacher, StudentPass
from letkd.supervision.spec import Spec
from letkd.teacher import FrozenTeacher

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Part(MethodParams):
    """One part of a composition: a registered method, its params and the weight of its losses."""

    method: str = Field(description="registered method name, e.g. at, kd, fitnet, letkd, dkd")
    name: str | None = Field(None, description="name in loss logs and checkpoints (default: the method)")
    weight: float = Field(1.0, ge=0, description="multiplies the part's losses (not its CE)")
    params: dict[str, Any] = Field(default_factory=dict, description="the method's own params")


@dataclasses.dataclass(frozen=True)
class _Parsed:
    name: str
    cls: type[Distiller]
    params: MethodParams
    weight: float


def _parse_parts(parts: list[Part]) -> list[_Parsed]:
    """Each part's method class and validated params; :class:`ConfigError` naming the part otherwise."""
    parsed: list[_Parsed] = []
    for i, part in enumerate(parts):
        where = f"method.params.parts.{i}"
        try:
            cls = get_method(part.method)
        except KeyError as exc:
            raise ConfigError(f"{where}.method: {exc.args[0]}") from None
        if cls is Compose:
            raise ConfigError(f"{where}.method: a composition cannot contain another; list its parts instead")
        name = part.name or part.method
        if not _NAME.match(name):
            raise ConfigError(f"{where}.name {name!r}: use lower-case letters, digits and '_'")
        if name in {p.name for p in parsed}:
            raise ConfigError(f"{where}: two parts are named {name!r}; give one of them a 'name'")
        try:
            params = cls.Params.model_validate(dict(part.params))
        except ValidationError as exc:
            heading = f"invalid params for part {i} ({part.method}) of method 'compose'"
            raise ConfigError(format_validation_error(exc, heading, f"{where}.params.")) from None
        parsed.append(_Parsed(name, cls, params, part.weight))
    return parsed


@register_method("compose")
class Compose(Distiller):
    """Several methods on one student and one teacher, each with its params and weight (module docs)."""

    requires_teacher = True

    class Params(MethodParams):
        """``method.params`` of ``compose``."""

        parts: list[Part] = Field(min_length=1)
        ce_weight: float | None = Field(
            None, ge=0, description="weight of the one CE term; null = the first part's CE term as it is"
        )

    @classmethod
    def parse_params(cls, params: dict[str, Any] | MethodParams | None) -> MethodParams:
        """Validate the composition and every part's params (errors name ``method.params.parts.<i>``)."""
        parsed = super().parse_params(params)
        _parse_parts(parsed.parts)  # type: ignore[attr-defined]
        return parsed

    @classmethod
    def supervision_specs(cls, params: MethodParams) -> list[Spec]:
        """The parts' specs, part after part."""
        return [spec for p in _parse_parts(params.parts) for spec in p.cls.supervision_specs(p.params)]  # type: ignore[attr-defined]

    @classmethod
    def example_params(cls) -> dict:
        """A KD layer (letKD-1, 16 templates), a FitNet hint and KD without its CE: supervision, grafts,
        replayed feature taps and logits in one step."""
        return {
            "parts": [
                {"method": "letkd", "params": {"layers": [
                    {"kind": "codebook", "student_tap": "penultimate", "teacher_tap": "penultimate",
                     "num_templates": 16}]}},
                {"method": "fitnet", "params": {"weight": 1.0}},
                {"method": "kd", "weight": 0.5, "params": {"ce_weight": 0.0}},
            ]
        }  # fmt: skip

    def __init__(self, student, teacher, params: Params | None = None, context: MethodContext | None = None):
        network = teacher.module if isinstance(teacher, FrozenTeacher) else teacher
        shared = SharedTeacher(network) if network is not None else None
        super().__init__(student, shared, params, context)
        context = self.context
        supervision = list(context.supervision or [])
        self.parts = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for p in _parse_parts(self.params.parts):
            n = len(p.cls.supervision_specs(p.params))
            mine, supervision = supervision[:n], supervision[n:]
            if p.cls.requires_teacher and shared is None:
                raise ConfigError(f"method 'compose': part {p.name!r} ({p.cls.method_name}) needs a teacher")
            part = p.cls(
                student,
                shared,
                params=p.params,
                context=dataclasses.replace(context, supervision=mine or None),
            )
            for shared_module in ("student", "teacher"):  # owned by the composition: not the part's state
                module = part._modules.pop(shared_module, None)
                object.__setattr__(part, shared_module, module)
            self.parts[p.name] = part
            self.weights[p.name] = p.weight
        parts = list(self.parts.values())
        self.student_pass = StudentPass(student)
        self.find_unused_parameters = any(getattr(p, "find_unused_parameters", False) for p in parts)
        self.standalone_student = parts[0].standalone_student
        self.needs_sample_indices = any(p.needs_sample_indices for p in parts)
        negatives = {p.num_negatives for p in parts if p.needs_sample_indices}
        if len(negatives) > 1:
            raise ConfigError(
                f"method 'compose': parts ask for different numbers of negatives {sorted(negatives)}"
            )
        self.num_negatives = negatives.pop() if negatives else 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch, passed on to every part (two-stage parts switch stage by it)."""
        super().set_epoch(epoch)
        for part in self.parts.values():
            part.set_epoch(epoch)

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, **batch):
        """Logits of the first part ``(B, classes)`` and ``{loss_ce, loss_<part>_<loss>...}``."""
        logits: torch.Tensor | None = None
        losses: dict[str, torch.Tensor] = {}
        own_ce = self.params.ce_weight is not None
        with self.teacher.sharing(), self.student_pass.step():
            for name, part in self.parts.items():
                part_logits, part_losses = part.forward_train(images, labels, **batch)
                logits = part_logits if logits is None else logits
                for key, value in part_losses.items():
                    if key == "loss_ce":
                        if not own_ce and "loss_ce" not in losses:
                            losses["loss_ce"] = value
                        continue
                    losses[f"loss_{name}_{key.removeprefix('loss_')}"] = self.weights[name] * value
        assert logits is not None
        if own_ce:
            losses = {"loss_ce": self.params.ce_weight * F.cross_entropy(logits, labels), **losses}
        return logits, losses

    def forward_test(self, images: torch.Tensor) -> torch.Tensor:
        """The first part's prediction."""
        return next(iter(self.parts.values())).forward_test(images)

    def extra_parameters(self) -> int:
        """Parameters the parts add to the deployed student (KD layers...)."""
        return sum(part.extra_parameters() for part in self.parts.values())
