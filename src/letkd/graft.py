"""Grafting: insert a module (e.g. a :class:`~letkd.layers.KDLayer`) after a named submodule of any model.

``graft(model, "layer3", KDLayer(64, 4096))`` adds the KD layer as a child ``letkd`` of ``model.layer3``
(state_dict keys ``layer3.letkd.*``; every original key is unchanged) and registers a forward hook on
``layer3`` that replaces its output by the KD layer's ``x_hat`` and records the template ``scores``
(:func:`graft_scores`). The graft survives ``copy.deepcopy`` and ``state_dict`` round trips. Deployment —
describing and re-creating grafts, rebuilding a student from a checkpoint, :func:`~letkd.deploy.bake` for
``torch.export``/ONNX — is :mod:`letkd.deploy`.

Details:

- A grafted module ``m`` must map the target's output tensor to ``(x_hat, scores)``, or to ``scores`` only
  (it then observes without changing the output, like :class:`~letkd.layers.TemplateHead`).
- A target may be grafted once; targets may be nested (``layer3.0`` and ``layer3``): the inner graft acts on
  the block's output, the outer one on the stage's output, which already carries the inner graft's change.
- A target that runs more than once per forward of the grafted model raises :class:`GraftError`.
- ``nn.Sequential`` targets iterate over their children in ``forward``; their class is swapped for a subclass
  (as ``torch.nn.utils.parametrize`` does) that hides the graft child from iteration, ``len`` and indexing.
- The graft hook runs before any other forward hook of the target, so feature taps see ``x_hat``.
- Token models (:func:`letkd.taps.token_grid`): at a target whose output is a token sequence ``(B, N, C)``
  the module receives the ``(B, C, h, w)`` map of the patch tokens, and its ``x_hat`` is written back as
  tokens in the model's layout with the prefix (class, distillation, register) tokens unchanged
  (:func:`apply_on_patches`).
- Deep-copied models keep their grafts; pickling a whole model whose ``nn.Sequential`` was grafted is not
  supported (save ``state_dict`` plus :func:`letkd.deploy.graft_spec` instead).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from letkd.taps import TokenGrid, UnknownTapError, as_feature_map, resolve_tap, token_grid

GRAFT_NAME = "letkd"


class GraftError(RuntimeError):
    """Raised for an invalid graft (unknown target, grafted twice, target run twice per forward, …)."""


# ---------------------------------------------------------------------------------------------------------
# hooks


def apply_on_patches(
    module: Callable[[torch.Tensor], Any], output: torch.Tensor, grid: TokenGrid | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Run a graft ``module`` on a target's ``output``; ``(new output or None if unchanged, scores)``.

    ``module`` maps a ``(B, C, H, W)`` map to ``(x_hat, scores)`` or to ``scores`` only. On a token model
    (``grid``) a ``(B, N, C)`` output is given to it as the patch map and ``x_hat`` is returned as tokens in
    the same layout, prefix tokens unchanged. The one place grafts (hooked or baked) meet token layouts.
    """
    feature_map = as_feature_map(output, grid)
    result = module(feature_map)
    if not isinstance(result, (tuple, list)):
        return None, result
    x_hat, scores = result[0], result[1]
    if x_hat is feature_map:
        return None, scores
    if feature_map is not output:
        assert grid is not None
        x_hat = grid.to_tokens(x_hat, output)
    return x_hat, scores


class _GraftTracker:
    """Forward pre-hook (and, via :meth:`finish`, post-hook) on the grafted root: counts forward passes.

    Each root forward starts a new *generation*; a graft hook that fires twice within one generation means the
    target ran twice. Calls of a target outside a root forward (e.g. ``model.layer3(x)``) are not counted.
    """

    def __init__(self) -> None:
        self.generation = 0
        self.depth = 0
        self.hooks: list[_GraftHook] = []

    def __call__(self, module: nn.Module, args: Any) -> None:
        self.depth += 1
        if self.depth == 1:
            self.generation += 1
            for hook in self.hooks:
                hook.scores = None

    def finish(self, module: nn.Module, args: Any, output: Any) -> None:
        self.depth = max(self.depth - 1, 0)


class _GraftHook:
    """Forward hook of a grafted target: runs the graft child on the output and records its scores."""

    def __init__(self, name: str, target: str, tracker: _GraftTracker, grid: TokenGrid | None = None) -> None:
        self.name = name
        self.target = target
        self.tracker = tracker
        self.grid = grid  # token layout of the grafted model (None: not a token model)
        self.generation = -1
        self.scores: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> torch.Tensor | None:
        tracker = self.tracker
        if tracker.depth > 0:
            if self.generation == tracker.generation:
                raise GraftError(
                    f"grafted module {self.target!r} ran more than once in one forward pass; graft a module "
                    "that is called exactly once (e.g. a block rather than a shared activation)"
                )
            self.generation = tracker.generation
        if not isinstance(output, torch.Tensor):
            raise GraftError(f"grafted module {self.target!r} returned {type(output).__name__}, not a tensor")
        x_hat, self.scores = apply_on_patches(module._modules[self.name], output, self.grid)
        if x_hat is None:
            # The graft saved `output` for backward; a later in-place op (ReLU(inplace=True)) on the tensor we
            # pass on must not modify it. Without grad nothing is saved and no copy is needed.
            return output.clone() if torch.is_grad_enabled() else None
        return x_hat

    def __deepcopy__(self, memo: dict) -> _GraftHook:
        # Recorded scores carry an autograd graph (not deep-copyable) and belong to the old forward pass.
        # Memoise the copy before copying the tracker, whose hook list refers back to this hook.
        new = _GraftHook.__new__(_GraftHook)
        memo[id(self)] = new
        new.name, new.target, new.generation, new.scores = self.name, self.target, -1, None
        new.grid = getattr(self, "grid", None)
        new.tracker = copy.deepcopy(self.tracker, memo)
        return new


# ---------------------------------------------------------------------------------------------------------
# nn.Sequential targets: hide the graft child from iteration


class _HideGraftChildren:
    """Mixin for a grafted ``nn.Sequential``: iteration, ``len`` and indexing skip the graft children."""

    _letkd_base_class: type
    _letkd_hidden: tuple[str, ...] = ()

    def _visible_items(self) -> list[tuple[str, nn.Module]]:
        return [(k, m) for k, m in self._modules.items() if k not in self._letkd_hidden]

    def __iter__(self):
        return iter([m for _, m in self._visible_items()])

    def __len__(self) -> int:
        return len(self._visible_items())

    def __getitem__(self, idx):
        items = self._visible_items()
        if isinstance(idx, slice):
            return self._letkd_base_class(OrderedDict(items[idx]))
        try:
            return items[idx][1]
        except IndexError:
            raise IndexError(f"index {idx} is out of range") from None


_HIDING_CLASSES: dict[type, type] = {}


def _hide_child(target: nn.Module, name: str) -> None:
    if not isinstance(target, nn.Sequential):
        return
    if not isinstance(target, _HideGraftChildren):
        base = type(target)
        cls = _HIDING_CLASSES.get(base)
        if cls is None:
            cls = type(f"Grafted{base.__name__}", (_HideGraftChildren, base), {"_letkd_base_class": base})
            _HIDING_CLASSES[base] = cls
        target.__class__ = cls
    target._letkd_hidden = (*target._letkd_hidden, name)


def _unhide_child(target: nn.Module, name: str) -> None:
    if not isinstance(target, _HideGraftChildren):
        return
    hidden = tuple(n for n in target._letkd_hidden if n != name)
    if hidden:
        target._letkd_hidden = hidden
    else:
        target.__dict__.pop("_letkd_hidden", None)
        target.__class__ = target._letkd_base_class


# ---------------------------------------------------------------------------------------------------------
# public API


class GraftHandle:
    """A graft point: ``target`` (module path), ``name``, ``module``, ``scores`` and ``remove()``."""

    def __init__(self, model: nn.Module, target: str, name: str) -> None:
        self.model = model
        self.target = target
        self.name = name

    @property
    def module(self) -> nn.Module:
        """The grafted module (child ``name`` of the target)."""
        return self.model.get_submodule(self.target)._modules[self.name]

    @property
    def scores(self) -> torch.Tensor | None:
        """Scores ``(B, K, H, W)`` recorded in the latest forward pass (``None`` before the first one)."""
        return _graft_hook(self.model.get_submodule(self.target))[1].scores

    def remove(self) -> nn.Module:
        """Undo the graft (see :func:`ungraft`); returns the detached module."""
        return ungraft(self.model, self.target)

    def __repr__(self) -> str:
        return f"GraftHandle(target={self.target!r}, name={self.name!r})"


def resolve_target(model: nn.Module, target: str) -> str:
    """Module path for ``target`` (:func:`letkd.taps.resolve_tap`); unknown ones raise :class:`GraftError`."""
    if not target:
        raise GraftError("the graft target must be a submodule path, not the model itself")
    try:
        return resolve_tap(model, target)
    except UnknownTapError as exc:
        raise GraftError(str(exc)) from None


def graft(model: nn.Module, target: str, module: nn.Module, name: str = GRAFT_NAME) -> GraftHandle:
    """Insert ``module`` after the submodule ``target`` of ``model`` (in place) and return a handle.

    Args:
        model: the network to modify (its forward passes are tracked for the run-once check).
        target: module path (``"layer3"``, ``"layer3.0"``) or a tap name known to
            :func:`letkd.taps.resolve_tap` (``"penultimate"``, ``"intermediate"``).
        module: maps the target's output ``(B, C, H, W)`` to ``(x_hat, scores)`` or to ``scores`` only (at
            a token target: the patch map of its ``(B, N, C)`` output, see the module docs).
        name: attribute name of the module inside the target (state_dict keys ``<target>.<name>.*``).

    ``module`` is switched to the target's train/eval mode.
    """
    path = resolve_target(model, target)
    host = model.get_submodule(path)
    if isinstance(host, (nn.ModuleList, nn.ModuleDict)):
        raise GraftError(f"{path!r} is a {type(host).__name__} (it has no forward); graft one of its items")
    if _graft_hook(host) is not None:
        raise GraftError(f"{path!r} is already grafted; remove that graft first")
    if name in host._modules or hasattr(host, name):
        raise GraftError(f"{path!r} already has an attribute {name!r}; choose another graft name")
    tracker = _tracker(model, create=True)
    module.train(host.training)  # a graft into an eval-mode model starts in eval mode too
    host.add_module(name, module)
    _hide_child(host, name)
    hook = _GraftHook(name, path, tracker, token_grid(model))
    host.register_forward_hook(hook, prepend=True)
    tracker.hooks.append(hook)
    return GraftHandle(model, path, name)


def graft_kd_layers(model: nn.Module, layers: Mapping[str, nn.Module]) -> dict[str, GraftHandle]:
    """Graft several modules at once: ``{target: module}`` → ``{target: handle}`` (targets as given)."""
    return {target: graft(model, target, module) for target, module in layers.items()}


def ungraft(model: nn.Module, target: str) -> nn.Module:
    """Remove the graft at ``target`` (hook, child, class swap); return the detached module."""
    path = resolve_target(model, target)
    host = model.get_submodule(path)
    found = _graft_hook(host)
    if found is None:
        raise GraftError(f"{path!r} is not grafted")
    hook_id, hook = found
    host._forward_hooks.pop(hook_id)
    host._forward_hooks_with_kwargs.pop(hook_id, None)
    host._forward_hooks_always_called.pop(hook_id, None)
    module = host._modules.pop(hook.name)
    _unhide_child(host, hook.name)
    tracker = hook.tracker
    tracker.hooks = [h for h in tracker.hooks if h is not hook]
    if not tracker.hooks:
        _remove_tracker(model, tracker)
    return module


def graft_points(model: nn.Module) -> list[GraftHandle]:
    """A handle for every graft inside ``model`` (target paths relative to ``model``), in module order."""
    points = []
    for path, mod in model.named_modules():
        found = _graft_hook(mod)
        if found is not None:
            points.append(GraftHandle(model, path, found[1].name))
    return points


def grafts(model: nn.Module) -> dict[str, nn.Module]:
    """``{target path: grafted module}`` for every graft inside ``model``, in module order."""
    return {point.target: point.module for point in graft_points(model)}


def graft_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{target path: scores (B, K, H, W)}`` recorded by the latest forward pass of ``model``.

    Targets that did not run in that pass are absent. Paths are relative to ``model`` (a graft made on
    ``distiller.student`` at ``"layer3"`` appears as ``"student.layer3"`` when asked of the distiller).
    """
    found = {}
    for path, mod in model.named_modules():
        hook = _graft_hook(mod)
        if hook is not None and hook[1].scores is not None:
            found[path] = hook[1].scores
    return found


def clear_graft_scores(model: nn.Module) -> None:
    """Drop the scores recorded by the graft hooks of ``model`` (frees their memory)."""
    for mod in model.modules():
        hook = _graft_hook(mod)
        if hook is not None:
            hook[1].scores = None


def describe_grafts(model: nn.Module) -> list[dict[str, Any]]:
    """One dict per graft point, for logs and run metadata: target, name, type, parameters, settings."""
    return [
        {
            "target": point.target,
            "name": point.name,
            "type": type(point.module).__name__,
            "parameters": sum(p.numel() for p in point.module.parameters()),
            "settings": point.module.extra_repr(),
        }
        for point in graft_points(model)
    ]


# ---------------------------------------------------------------------------------------------------------
# helpers


def _graft_hook(module: nn.Module) -> tuple[int, _GraftHook] | None:
    for hook_id, hook in module._forward_hooks.items():
        if isinstance(hook, _GraftHook):
            return hook_id, hook
    return None


def _tracker(model: nn.Module, create: bool) -> _GraftTracker | None:
    for hook in model._forward_pre_hooks.values():
        if isinstance(hook, _GraftTracker):
            return hook
    if not create:
        return None
    tracker = _GraftTracker()
    model.register_forward_pre_hook(tracker)
    model.register_forward_hook(tracker.finish, always_call=True)
    return tracker


def _remove_tracker(model: nn.Module, tracker: _GraftTracker) -> None:
    """Remove ``tracker``'s hooks from whichever module of ``model`` holds them."""
    for mod in model.modules():
        for hook_id, hook in list(mod._forward_pre_hooks.items()):
            if hook is tracker:
                mod._forward_pre_hooks.pop(hook_id)
        for hook_id, hook in list(mod._forward_hooks.items()):
            if getattr(hook, "__self__", None) is tracker:
                mod._forward_hooks.pop(hook_id)
                mod._forward_hooks_always_called.pop(hook_id, None)


def __getattr__(name: str) -> object:
    # ``from letkd.graft import bake`` (the README's import) keeps working; deployment lives in letkd.deploy
    if name == "bake":
        from letkd.deploy import bake

        return bake
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
