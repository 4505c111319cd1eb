"""Taps: named points of an unmodified model — the one resolver, forward-hook readers, the one shape probe.

:func:`resolve_tap` turns a tap name (``"penultimate"``, from the architecture's table in
:mod:`letkd.models.tap_names`) or a module path into a module path; :class:`FeatureTaps` reads the outputs
of such modules through forward hooks; :func:`probe_shapes` runs one dummy forward to learn their shapes.

::

    with torch.inference_mode(), FeatureTaps(teacher, ["layer3.0", "layer3"], stop_after_last=True) as taps:
        feats = taps(images)          # {"layer3.0": (B, C, H, W), "layer3": (B, C, H, W)}

Choices:

- A tapped tensor is what the next module receives. Because a later in-place op (``ReLU(inplace=True)``
  after a BatchNorm, ``out += identity``) would change a stored reference, taps store a copy by default
  (``clone=True``; one copy of the tapped map, small next to the forward pass; the last tap of a forward
  ended by ``stop_after_last`` needs no copy and gets none). With ``clone=False`` the
  reference is stored and an in-place change after the tap raises :class:`TapError` when it can be
  detected (tensors made under ``torch.inference_mode()`` have no version counter: no check there).
- A module that runs more than once per forward raises :class:`TapError` unless ``which_call`` says which
  call to keep (0-based; ``-1`` = the last call). With ``stop_after_last`` the forward ends right after the
  last wanted output, so a module's later calls are never seen.
- Token models (timm ViT/DeiT: ``model.patch_embed.grid_size`` and ``model.num_prefix_tokens``): a tap
  whose output is a token sequence ``(B, N, C)`` is delivered as the ``(B, C, h, w)`` map of its patch
  tokens (:class:`TokenGrid`, a view; the class/distillation/register tokens are left out), so every
  reader — supervision, targets, feature methods, the shape probe — sees a map as on a CNN.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from letkd.models.tap_names import TapInferenceError, get_taps, sample_paths


class TapError(RuntimeError):
    """Raised when a tap cannot deliver the requested feature (not called, called twice, changed in place)."""


class UnknownTapError(KeyError, ValueError):
    """Raised for a tap that is neither a module path of the model nor one of its tap names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class TokenGrid:
    """How a token model lays out a sequence ``(B, N, C)``: ``N = P + h·w``, the ``P`` prefix tokens
    (class, distillation, register tokens) first, then the patch tokens in row-major ``(h, w)`` order.

    A sequence of ``h·w`` tokens (e.g. the patch embedding's output) has no prefix. Any other length
    raises :class:`TapError`: the grid is the model's, fixed at construction (no dynamic image sizes).
    """

    height: int
    width: int
    prefix: int

    def patch_start(self, tokens: torch.Tensor) -> int:
        """Index of the first patch token of ``tokens (B, N, C)``: ``P``, or 0 when there is no prefix."""
        n, patches = tokens.shape[1], self.height * self.width
        if n not in (patches, patches + self.prefix):
            raise TapError(
                f"a token tap gave {n} tokens, but the model lays out {self.prefix} prefix + "
                f"{self.height}×{self.width} patch tokens; inputs of another size than the model's "
                "img_size are not supported at token taps"
            )
        return n - patches

    def to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, C) -> (B, C, h, w)``: a view of the patch tokens (no copy; prefix tokens left out)."""
        start = self.patch_start(tokens)
        return tokens[:, start:].transpose(1, 2).unflatten(2, (self.height, self.width))

    def to_tokens(self, feature_map: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` patch map back into the layout of ``tokens (B, N, C)``, whose prefix tokens are
        kept unchanged (the same values, in front)."""
        start = self.patch_start(tokens)
        patches = feature_map.flatten(2).transpose(1, 2)
        return torch.cat([tokens[:, :start], patches], dim=1) if start else patches


def token_grid(model: nn.Module) -> TokenGrid | None:
    """The :class:`TokenGrid` of a token model (``patch_embed.grid_size`` and ``num_prefix_tokens``, as timm
    ViT/DeiT models have), ``None`` for other models."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    if grid is None or prefix is None:
        return None
    height, width = (int(g) for g in grid)
    return TokenGrid(height, width, int(prefix))


def as_feature_map(output: Any, grid: TokenGrid | None) -> Any:
    """``output`` as a reader sees it: a token sequence ``(B, N, C)`` of a token model becomes its patch map
    ``(B, C, h, w)`` (a view); anything else is returned as is."""
    if grid is not None and isinstance(output, torch.Tensor) and output.dim() == 3:
        return grid.to_map(output)
    return output


class _StopForward(Exception):
    """Raised by a tap hook once every wanted feature is recorded, to end the forward pass early."""


def resolve_tap(model: nn.Module, tap: str) -> str:
    """Module path of ``tap`` on ``model``: a module path (``"layer3.0"``) or a tap name (``"penultimate"``).

    The one resolver of the package (taps, grafts, supervision, methods). A module path wins over a tap
    name of the same spelling; the model itself (``""``) is not a tap. Unknown taps raise
    :class:`UnknownTapError` listing close matches, the model's tap names and some module paths.
    """
    if tap:
        try:
            model.get_submodule(tap)
            return tap
        except AttributeError:
            pass
    try:
        names = get_taps(model)
    except TapInferenceError:
        names = {}
    if tap in names:
        return names[tap]
    paths = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(tap, paths + list(names), n=8, cutoff=0.5) if tap else []
    hint = f"close matches: {', '.join(close)}; " if close else ""
    raise UnknownTapError(
        f"{tap!r} is neither a tap name nor a module path of {type(model).__name__}; {hint}"
        f"tap names: {', '.join(sorted(names)) or '(none known for this model)'}; "
        f"valid module paths include: {', '.join(sample_paths(model))}"
    )


class FeatureTaps:
    """Forward hooks that record the outputs of several named modules of ``model`` (left unmodified).

    Args:
        model: the network to read from (e.g. a teacher in eval mode).
        taps: module paths (``"layer3.0"``) or tap names (:func:`resolve_tap`); the result dict uses them
            as keys.
        stop_after_last: end the forward pass as soon as every tap has fired (``taps(x)`` catches it), so a
            teacher runs only as far as needed. ``taps.output`` is then ``None``.
        which_call: which call of a module to keep when it runs several times per forward: an int for all
            taps or ``{tap: int}``; 0-based, ``-1`` = last. ``None`` (default) = a second call is an error.
        clone: store copies of the tapped tensors (guards against later in-place ops), see module docs.

    On a token model a tapped ``(B, N, C)`` sequence is recorded as its ``(B, C, h, w)`` patch map
    (:func:`as_feature_map`). Use as a context manager or call :meth:`remove`. ``taps(*inputs)`` runs
    ``model`` and returns ``{tap: tensor}``; running ``model`` directly also records (read
    :attr:`features`). Calls of a tapped module outside a forward pass of ``model`` are ignored.
    """

    def __init__(
        self,
        model: nn.Module,
        taps: Sequence[str],
        stop_after_last: bool = False,
        which_call: int | Mapping[str, int] | None = None,
        clone: bool = True,
    ) -> None:
        if isinstance(taps, str):
            taps = [taps]
        if not taps:
            raise ValueError("FeatureTaps needs at least one tap")
        self.model = model
        self.stop_after_last = stop_after_last
        self.clone = clone
        self.grid = token_grid(model)
        self.paths: dict[str, str] = {tap: resolve_tap(model, tap) for tap in taps}
        calls = which_call if isinstance(which_call, Mapping) else dict.fromkeys(self.paths, which_call)
        unknown = set(calls) - set(self.paths)
        if unknown:
            raise ValueError(f"which_call names taps that are not tapped: {sorted(unknown)}")
        self._want: dict[str, int | None] = {}
        for tap, path in self.paths.items():
            want = calls.get(tap)
            if path in self._want and self._want[path] != want:
                raise ValueError(f"taps resolving to {path!r} ask for different calls")
            self._want[path] = want
        if stop_after_last and any(w is not None and w < 0 for w in self._want.values()):
            raise ValueError("stop_after_last cannot be combined with which_call=-1 (the last call)")
        self.output: Any = None
        self._captured: dict[str, Any] = {}
        self._versions: dict[str, int] = {}
        self._calls: dict[str, int] = {}
        self._depth = 0
        self.paused = False  # True: forward passes of the model record nothing (see :meth:`pause`)
        self._handles = [
            model.register_forward_pre_hook(self._start),
            model.register_forward_hook(self._finish, always_call=True),
        ]
        for path in self._want:
            module = model.get_submodule(path)
            self._handles.append(module.register_forward_hook(self._make_hook(path)))

    # -- hooks ---------------------------------------------------------------------------------------------

    def _start(self, module: nn.Module, args: Any) -> None:
        self._depth += 1
        if self._depth == 1:
            self._captured.clear()
            self._versions.clear()
            self._calls = dict.fromkeys(self._want, 0)

    def _finish(self, module: nn.Module, args: Any, output: Any) -> None:
        self._depth = max(self._depth - 1, 0)

    def _make_hook(self, path: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._depth == 0 or self.paused:  # called on its own, or recording paused
                return
            call = self._calls.get(path, 0)
            self._calls[path] = call + 1
            want = self._want[path]
            if want is None and call >= 1:
                raise TapError(
                    f"tapped module {path!r} ran more than once in one forward pass; pass which_call "
                    "(0-based index of the call to keep, -1 for the last) to choose one"
                )
            if want is None or want == call or want < 0:
                # the forward ends right after the last tap when stopping early: nothing can modify it then
                stops = self.stop_after_last and len(self._captured | {path: None}) == len(self._want)
                self._record(path, output, copy=self.clone and not stops)
            if self.stop_after_last and len(self._captured) == len(self._want):
                raise _StopForward

        return hook

    def _record(self, path: str, output: Any, copy: bool) -> None:
        output = as_feature_map(output, self.grid)
        if isinstance(output, torch.Tensor):
            if copy:
                output = output.clone()
            elif not output.is_inference():
                self._versions[path] = output._version
        self._captured[path] = output

    # -- running -------------------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Run ``model(*args, **kwargs)`` and return ``{tap: output of that module}``."""
        self.output = None
        try:
            self.output = self.model(*args, **kwargs)
        except _StopForward:
            pass
        return self.features

    @property
    def features(self) -> dict[str, torch.Tensor]:
        """``{tap: tensor}`` recorded by the latest forward pass of ``model``."""
        missing = [p for p in self._want if p not in self._captured]
        if missing:
            detail = ", ".join(f"{p!r} (called {self._calls.get(p, 0)}×)" for p in missing)
            raise TapError(f"tapped modules did not produce the wanted call in the last forward: {detail}")
        for path, version in self._versions.items():
            if self._captured[path]._version != version:
                raise TapError(
                    f"the output of {path!r} was modified in place after it was tapped; use clone=True"
                )
        return {tap: self._captured[path] for tap, path in self.paths.items()}

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Within the block, forward passes of the model run without recording (or stopping early)."""
        before, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = before

    # -- lifetime ------------------------------------------------------------------------------------------

    def remove(self) -> None:
        """Remove all hooks; the model is left exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._captured.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FeatureTaps({self.paths}, stop_after_last={self.stop_after_last})"


# ---------------------------------------------------------------------------------------------------------
# the one shape probe


def dummy_input(model: nn.Module, input_size: Sequence[int], batch_size: int = 2) -> torch.Tensor:
    """Zeros ``(batch_size, *input_size)`` on the device and floating dtype of ``model``'s parameters."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(batch_size, *input_size, device=device, dtype=dtype)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode; its train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def probe_shapes(
    model: nn.Module, taps: Sequence[str], input_size: Sequence[int] = (3, 32, 32)
) -> dict[str, tuple[int, ...]]:
    """``{tap: output shape without the batch dimension}`` for a dummy input of one image ``input_size``.

    One eval-mode forward (the mode is restored) that stops after the deepest tap. Unknown taps raise
    :class:`UnknownTapError`; a forward that fails on the input raises :class:`TapError`.
    """
    taps = list(dict.fromkeys(taps))
    with eval_mode(model), FeatureTaps(model, taps, stop_after_last=True) as reader:
        try:
            store = reader(dummy_input(model, input_size))
        except (RuntimeError, ValueError) as exc:
            if isinstance(exc, TapError):
                raise
            raise TapError(
                f"cannot read taps {taps} of {type(model).__name__} on a {tuple(input_size)} input: {exc}"
            ) from None
    first = {tap: out[0] if isinstance(out, (tuple, list)) else out for tap, out in store.items()}
    return {tap: tuple(first[tap].shape[1:]) for tap in taps}


def feature_shape(
    model: nn.Module, tap: str, input_size: Sequence[int] = (3, 32, 32)
) -> tuple[int, int, int]:
    """``(C, H, W)`` of the output of ``tap`` (name or path) for one input of shape ``input_size``."""
    shape = probe_shapes(model, [tap], input_size)[tap]
    if len(shape) != 3:
        raise TapError(f"tap {tap!r} outputs shape {shape} per image, not a (C, H, W) map")
    return shape  # type: ignore[return-value]
