"""AB — "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons"
(Heo, Lee, Yun & Choi, AAAI 2019).

Init stage (see :mod:`letkd.methods.init_stage`): for each stage pair, a connector maps the student's
pre-activation to the teacher's shape (identity when shapes match, else RepDistiller's ``ConvReg`` without
ReLU: conv + BN) and a margin loss pushes it beyond ``±margin`` on the side of the teacher neuron's sign;
pair ``i`` of ``n`` weighs ``2^(i−n+1)``, and each pair's sum is scaled by ``3 / 1000 / B``
(RepDistiller's ``ABLoss``). Then plain training.

Pre-activations are RepDistiller's ``preact=True`` features (:func:`preactivation_sources`):

- a stage output that an ``nn.ReLU`` produces is read *before* that ReLU (its input, found at start-up);
  a tap may also name a ReLU, whose input is read — the WRN configs name RepDistiller's preact points
  ``block2.layer.0.relu1``, ``block3.layer.0.relu1``, ``relu``;
- a model may declare its stages' pre-activations (``model.preactivations``: stage path → modules whose
  inputs, concatenated along channels, are the pre-activation): ShuffleNetV2's is its last unit's
  passthrough half beside the input of its last ReLU, before the channel shuffle; MobileNetV2's stages end
  in a linear bottleneck, so each one's pre-activation is its output (the next module's input);
- any other stage output is refused at start-up.

The teacher's ReLU outputs are read (the loss only uses the sign of the teacher's pre-activation, and
``relu(t) > 0`` exactly when ``t > 0``); for a stage the teacher declares, its output (MobileNetV2: the
pre-activation itself; ShuffleNetV2: the same signs in the shuffled channel order, which a learned
connector absorbs).

Defaults (RepDistiller ``train_student.py``/``run_cifar_distill.sh``: ``--distill abound -r 1 -a 0 -b 1``,
``--init_epochs 30``, ``ABLoss(margin=1.0)``, pairs ``feat[1:-1]`` = every stage): ``init_epochs 30``,
``margin 1``, ``weight 1`` (init loss), ``ce_weight 1``, ``kd_weight 0``. The connectors are used in training
only: the deployed student has no extra parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from torch import nn

from letkd.config import ConfigError
from letkd.methods.base import register_method
from letkd.methods.features import paired_taps
from letkd.methods.fitnet import HintRegressor
from letkd.methods.init_stage import InitStageDistiller, InitStageParams
from letkd.methods.losses import ab_loss
from letkd.taps import dummy_input, eval_mode


def ab_connector(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module | None:
    """Identity (``None``) when the ``(C, H, W)`` shapes match, else ``ConvReg(use_relu=False)``."""
    if tuple(student_shape) == tuple(teacher_shape):
        return None
    return HintRegressor(student_shape, teacher_shape, use_relu=False)


def ab_pair_weights(n: int) -> list[float]:
    """``2^(i−n+1)`` for pair ``i`` of ``n``: the deepest pair weighs 1, each shallower one half the next."""
    return [2.0 ** (i - n + 1) for i in range(n)]


def ab_pair_loss(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Margin loss of one pair (``source`` after its connector), summed, ``· 3 / 1000 / B``."""
    return ab_loss(source, target, margin) / source.shape[0] * 3 / 1000


@torch.no_grad()
def producing_relu(model: nn.Module, path: str, input_size: Sequence[int]) -> str | None:
    """The ``nn.ReLU`` whose output *is* the output of module ``path`` (``path`` itself when it is one),
    found with one dummy forward; ``None`` when no ReLU produces it."""
    module = model.get_submodule(path)
    if isinstance(module, nn.ReLU):
        return path
    candidates = [f"{path}.{n}" for n, m in module.named_modules() if n and isinstance(m, nn.ReLU)]
    outputs: dict[str, object] = {}
    hooks = [
        model.get_submodule(c).register_forward_hook(
            lambda m, a, out, c=c, store=outputs: store.__setitem__(c, out)
        )
        for c in [path, *candidates]
    ]
    try:
        with eval_mode(model):
            model(dummy_input(model, input_size))
    finally:
        for h in hooks:
            h.remove()
    match = [c for c in candidates if outputs.get(c) is outputs.get(path)]
    return match[-1] if match else None


def preactivation_sources(
    model: nn.Module, paths: Sequence[str], input_size: Sequence[int], role: str
) -> list[tuple[str, ...]]:
    """For each tap, the modules whose inputs, concatenated along channels, are its pre-activation (see the
    module docs). Raises :class:`ConfigError` for a tap whose pre-activation cannot be read."""
    declared = getattr(model, "preactivations", None) or {}
    sources = []
    for path in paths:
        if path in declared:
            sources.append(tuple(declared[path]))
            continue
        relu = producing_relu(model, path, input_size)
        if relu is None:
            raise ConfigError(f"ab: {role} tap {path!r} {_UNREADABLE}")
        sources.append((relu,))
    return sources


def teacher_preactivation_paths(
    model: nn.Module, paths: Sequence[str], input_size: Sequence[int]
) -> list[str]:
    """For each teacher tap, a module whose output has the signs of its pre-activation: the ReLU producing
    it, or the tap itself for a stage the model declares in ``preactivations``."""
    declared = getattr(model, "preactivations", None) or {}
    found = []
    for path in paths:
        relu = path if path in declared else producing_relu(model, path, input_size)
        if relu is None:
            raise ConfigError(f"ab: teacher tap {path!r} {_UNREADABLE}")
        found.append(relu)
    return found


_UNREADABLE = (
    "is not the output of an nn.ReLU and its model declares no pre-activation for it, so its "
    "pre-activation cannot be read; give taps that name ReLU modules (their inputs are read)"
)


@register_method("ab")
class AB(InitStageDistiller):
    """Activation-boundary distillation of the student's stage pre-activations, then CE training."""

    class Params(InitStageParams):
        """``method.params`` of ``ab``; ``None`` taps = all feature stages (read before their final ReLU)."""

        margin: float = Field(1.0, gt=0)

    def select_taps(self, student, teacher, params, input_size):
        """The paired stages (their pre-activations' shapes are theirs); records where each student
        pre-activation is read (:func:`preactivation_sources`)."""
        s_paths, t_paths = paired_taps(
            student, teacher, params.student_taps, params.teacher_taps, "all", input_size
        )
        self.preactivation_sources = preactivation_sources(student, s_paths, input_size, "student")
        return s_paths, teacher_preactivation_paths(teacher, t_paths, input_size)

    def student_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Student logits ``(B, classes)`` and the pre-activation ``(B, C, H, W)`` of each paired stage."""
        inputs: dict[str, torch.Tensor] = {}
        wanted = dict.fromkeys(m for group in self.preactivation_sources for m in group)
        hooks = [
            self.student.get_submodule(m).register_forward_pre_hook(
                lambda mod, args, m=m: inputs.__setitem__(m, args[0].clone())  # an inplace ReLU follows
            )
            for m in wanted
        ]
        try:
            logits = self.student(images)
        finally:
            for h in hooks:
                h.remove()
        return logits, [
            inputs[g[0]] if len(g) == 1 else torch.cat([inputs[m] for m in g], 1)
            for g in self.preactivation_sources
        ]

    def make_connector(self, i, student_shape, teacher_shape):
        """See :func:`ab_connector`."""
        return ab_connector(student_shape, teacher_shape)

    def make_pair_weights(self, n: int) -> list[float]:
        """See :func:`ab_pair_weights`."""
        return ab_pair_weights(n)

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """See :func:`ab_pair_loss`."""
        return ab_pair_loss(s, t, self.params.margin)
