"""What letKD and QuEST share: the ``layers`` params format and the teacher-side targets of each layer.

A layer pairs a student tap (where template scores are read) with a teacher tap (whose features the
supervision module turns into per-location target distributions):

```yaml
layers:
  - {kind: subclass, student_tap: intermediate, teacher_tap: intermediate, teacher_pool: false,
     alpha: 1.0, weight: 1.0, subclasses_per_class: 8, lda_components: 60}
  - {kind: codebook, student_tap: penultimate, teacher_tap: penultimate, teacher_pool: false,
     alpha: 1.0, weight: 1.0, num_templates: 4096, temperature: 1.0}
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from letkd.config import ConfigError
from letkd.methods.base import MethodParams
from letkd.methods.features import aligned_grid, pool2x2, pool_to_grid, resolve_taps, tap_shapes
from letkd.supervision.spec import CodebookSpec, Spec, SubclassSpec
from letkd.teacher import FrozenTeacher
from letkd.template_loss import CodebookTargets, TableTargets, TemplateTargets


class _LayerParams(MethodParams):
    student_tap: str = Field(description="student tap name or module path")
    teacher_tap: str = Field(description="teacher tap name or module path")
    teacher_pool: bool = Field(False, description="2×2 average-pool the teacher feature (heterogeneous)")
    weight: float = Field(1.0, ge=0, description="weight of this layer's template KL loss")


class _CodebookParams(_LayerParams):
    num_templates: int = Field(4096, ge=1, description="K, the number of K-means centres / templates")
    temperature: float = Field(1.0, gt=0, description="τ of softmax(−τ·‖f − ρ_k‖²)")

    def supervision_spec(self) -> CodebookSpec:
        """The codebook this layer is supervised by."""
        return CodebookSpec(self.teacher_tap, self.teacher_pool, self.num_templates)

    def target_options(self) -> dict[str, float]:
        """Keyword arguments of the supervision module's ``targets`` call for this layer."""
        return {"temperature": self.temperature}


class CodebookLayer(_CodebookParams):
    """A penultimate-style layer supervised by K-means soft assignments (SPEC §2)."""

    kind: Literal["codebook"]
    alpha: float = Field(1.0, description="residual weight of the KD layer's value path")


class SubclassLayer(_LayerParams):
    """An intermediate layer supervised by LDA sub-class decisions (SPEC §3)."""

    kind: Literal["subclass"]
    alpha: float = Field(1.0, description="residual weight of the KD layer's value path")
    subclasses_per_class: int = Field(8, ge=1)
    lda_components: int = Field(60, ge=1)

    def supervision_spec(self) -> SubclassSpec:
        """The sub-class codebook this layer is supervised by."""
        return SubclassSpec(
            self.teacher_tap, self.teacher_pool, self.subclasses_per_class, self.lda_components
        )

    def target_options(self) -> dict[str, float]:
        """Keyword arguments of the supervision module's ``targets`` call for this layer (none)."""
        return {}


class QuestLayer(_CodebookParams):
    """QuEST's single codebook layer: no value path (so no ``alpha``), τ = 5 by default (SPEC §10)."""

    kind: Literal["codebook"] = "codebook"
    temperature: float = Field(5.0, gt=0, description="τ of softmax(−τ·‖f − ρ_k‖²)")


LetKDLayer = Annotated[CodebookLayer | SubclassLayer, Field(discriminator="kind")]
AnyLayer = CodebookLayer | SubclassLayer | QuestLayer


def layer_specs(layers: Sequence[AnyLayer]) -> list[Spec]:
    """The supervision of each layer, in order (what ``supervision_specs`` of letKD and QuEST return)."""
    return [layer.supervision_spec() for layer in layers]


def expected_templates(layer: AnyLayer, num_classes: int) -> int:
    """Number of templates K a layer's supervision produces."""
    if isinstance(layer, SubclassLayer):
        return num_classes * layer.subclasses_per_class
    return layer.num_templates


def loss_names(layers: Sequence[AnyLayer]) -> list[str]:
    """``loss_kd_<student tap>`` per layer (dots become underscores; repeated taps get an index)."""
    names: list[str] = []
    for i, layer in enumerate(layers):
        name = "loss_kd_" + layer.student_tap.replace(".", "_")
        names.append(name if name not in names else f"{name}_{i}")
    return names


class TeacherTargets(nn.Module):
    """Per-layer teacher targets: teacher taps (no grad, early stop) → optional 2×2 pool → supervision.

    Where the grids differ by an integer factor (:func:`~letkd.methods.features.aligned_grid`) the finer side
    is average-pooled to the coarser grid (:meth:`on_grid`): the teacher's features before the targets are
    computed (as ``teacher_pool`` does), or the student's scores, which the method passes through
    :meth:`on_grid` before the loss.

    Holds the supervision modules (so they follow ``.to(device)``) and declares the layers' teacher taps on
    the :class:`~letkd.teacher.FrozenTeacher`; built once per run, it checks every layer with a dummy
    forward (see :meth:`check`).
    """

    def __init__(
        self,
        teacher: FrozenTeacher,
        layers: Sequence[AnyLayer],
        supervision: Sequence[nn.Module] | None,
        method: str,
    ) -> None:
        super().__init__()
        if supervision is None or len(supervision) != len(layers) or any(s is None for s in supervision):
            n = "none" if supervision is None else sum(s is not None for s in supervision)
            raise ConfigError(
                f"method {method!r} needs one supervision module per entry of params.layers "
                f"({len(layers)}), got {n}"
            )
        self.method = method
        self.layers = list(layers)
        self.supervision = nn.ModuleList(supervision)
        self.teacher_paths = resolve_taps(teacher, [layer.teacher_tap for layer in layers], "teacher")
        self._teacher = [teacher]  # not a submodule: the Distiller owns the teacher
        self._buffers_by_layer: dict[int, torch.Tensor] = {}  # per-layer target buffers, not state
        self.grids: list[tuple[int, int] | None] = [None] * len(self.layers)  # common grids, set by check()

    def check(
        self,
        student_shapes: Sequence[tuple[int, ...]],
        input_size: tuple[int, int, int],
        num_classes: int,
    ) -> list[int]:
        """Verify grids and supervision dims with a dummy teacher forward; return K per layer.

        ``student_shapes``: ``(C, H, W)`` at each layer's student tap. Raises :class:`ConfigError` naming
        the taps and shapes on the first mismatch.
        """
        t_shapes = tap_shapes(self._teacher[0], self.teacher_paths, input_size, "teacher")
        device = next(iter(self.supervision.buffers()), torch.zeros(0)).device
        ks = []
        for i, (layer, sup, t_shape, s_shape) in enumerate(
            zip(self.layers, self.supervision, t_shapes, student_shapes)
        ):
            if layer.teacher_pool:
                t_shape = (t_shape[0], t_shape[1] // 2, t_shape[2] // 2)
            self.grids[i] = aligned_grid(
                layer.student_tap, s_shape, layer.teacher_tap, t_shape, layer.teacher_pool
            )
            dim = getattr(sup, "dim", None)
            if dim is not None and dim != t_shape[0]:
                raise ConfigError(
                    f"layer {i}: the {layer.kind} supervision expects {dim}-channel features but teacher "
                    f"tap {layer.teacher_tap!r} gives {t_shape} (C, H, W); was it fitted on another tap "
                    "or teacher?"
                )
            feats = torch.rand(2, *t_shape, device=device)
            labels = torch.zeros(2, dtype=torch.long, device=device)
            try:
                out = sup.targets(feats, labels, **layer.target_options())
            except (RuntimeError, ValueError) as exc:
                raise ConfigError(
                    f"layer {i}: the {layer.kind} supervision rejects teacher tap {layer.teacher_tap!r} "
                    f"features of shape {t_shape}: {exc}"
                ) from None
            k = int(out.shape[1])
            want = expected_templates(layer, num_classes)
            source = "num_classes × subclasses_per_class" if layer.kind == "subclass" else "num_templates"
            if k != want:
                raise ConfigError(
                    f"layer {i}: the {layer.kind} supervision gives {k} targets per location but params say "
                    f"{want} ({source})"
                )
            ks.append(k)
        return ks

    @torch.no_grad()
    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Targets ``(B, K_i, H_i, W_i)`` per layer (on the layer's common grid) for a batch
        ``images (B, 3, H, W)``, ``labels (B,)``.

        The targets of each layer are written into a buffer kept from the previous call (same shape and
        device), so a new call overwrites the previous call's targets. A graph still holding them then fails
        loudly at ``backward`` (autograd's version check) instead of reading the new values.
        """
        feats = self._teacher[0].features(images)
        out = []
        for i, (layer, sup) in enumerate(zip(self.layers, self.supervision)):
            f = self._teacher_map(i, feats)
            buffer = self._reusable_buffer(i, f.shape[0] * f.shape[2] * f.shape[3], sup)
            target = sup.targets(f, labels, out=buffer, **layer.target_options())
            # the (B·H·W, K) rows behind the (B, K, H, W) view: next call's buffer
            self._buffers_by_layer[i] = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1])
            out.append(target)
        return out

    def on_grid(self, i: int, maps: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s teacher features ``(B, D, H, W)`` or student scores ``(B, K, h, w)`` on the layer's
        common grid: the finer side average-pooled, the coarser one unchanged."""
        grid = self.grids[i]
        return maps if grid is None else pool_to_grid(maps, grid)

    def _teacher_map(self, i: int, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Layer ``i``'s teacher map from the tapped ``feats``: 2×2-pooled with ``teacher_pool``, then on
        the common grid."""
        f = feats[self.teacher_paths[i]]
        return self.on_grid(i, pool2x2(f) if self.layers[i].teacher_pool else f)

    @torch.no_grad()
    def lazy(self, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor | TemplateTargets]:
        """Per layer, the targets of :meth:`forward` in the form :func:`letkd.template_loss.template_kl`
        computes them from a chunk at a time: :class:`CodebookTargets` (teacher features, centres, τ) and
        :class:`TableTargets` (sub-class score matrix, one sub-class per location); the map itself from any
        other supervision module."""
        feats = self._teacher[0].features(images)
        out: list[torch.Tensor | TemplateTargets] = []
        for i, (layer, sup) in enumerate(zip(self.layers, self.supervision)):
            f = self._teacher_map(i, feats)
            kind = getattr(sup, "kind", None)
            if kind == "codebook":
                tau = layer.target_options().get("temperature", sup.temperature)
                out.append(CodebookTargets(f, sup.centers, tau))
            elif kind == "subclass":
                with torch.autocast(f.device.type, enabled=False):  # float32 distances under AMP too
                    out.append(TableTargets(sup.score_matrix, sup.assign(f, labels)))
            else:
                out.append(sup.targets(f, labels, **layer.target_options()))
        return out

    def _reusable_buffer(self, i: int, rows: int, sup: nn.Module) -> torch.Tensor | None:
        """Layer ``i``'s previous target rows if they have ``rows`` rows on ``sup``'s device, else ``None``
        (the supervision module then allocates, and that result becomes the buffer)."""
        buffer = self._buffers_by_layer.get(i)
        device = next(iter(sup.buffers())).device
        return buffer if buffer is not None and buffer.shape[0] == rows and buffer.device == device else None


def student_shapes(
    student: nn.Module, layers: Sequence[AnyLayer], input_size: tuple[int, int, int]
) -> tuple[list[str], list[tuple[int, ...]]]:
    """Module paths and ``(C, H, W)`` of each layer's student tap (dummy forward, eval mode)."""
    paths = resolve_taps(student, [layer.student_tap for layer in layers], "student")
    return paths, tap_shapes(student, paths, input_size, "student")
