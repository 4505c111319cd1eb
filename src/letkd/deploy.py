"""Deployment of a grafted student: describe and re-create its grafts, rebuild it from a checkpoint, bake the
graft hooks into plain modules and write ``torch.export`` / ONNX files.

- :func:`graft_spec` / :func:`apply_graft_spec`: a JSON-able list of the grafts of a model (each grafted
  module describes itself with ``graft_spec()``), saved in training checkpoints as ``meta["grafts"]``, and
  its inverse on a fresh model.
- :func:`load_student`: the one way to rebuild a checkpoint's student (model name, classes, constructor
  kwargs and grafts from its metadata) and load its weights strictly — used by ``letkd eval`` and
  ``letkd export``.
- :func:`bake`: a hook-free copy (:class:`BakedGraft` modules, KD layers in their fast inference form) that
  ``torch.export`` and ONNX trace; :func:`export_program`, :func:`write_pt2`, :func:`write_onnx`.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from letkd.graft import (
    GRAFT_NAME,
    GraftError,
    GraftHandle,
    apply_on_patches,
    graft,
    graft_points,
    grafts,
    ungraft,
)
from letkd.layers import KDLayer, TemplateHead
from letkd.taps import TokenGrid, token_grid
from letkd.utils import atomic_write_bytes, file_mode

#: ``kind`` of a graft spec entry → the module class it rebuilds (its ``graft_spec()`` gives the kwargs)
GRAFT_KINDS: dict[str, type[nn.Module]] = {"kd_layer": KDLayer, "template_head": TemplateHead}
_PLACEMENT = ("target", "name", "kind")


def graft_spec(model: nn.Module) -> list[dict[str, Any]]:
    """A JSON-able description of the grafts of ``model`` that :func:`apply_graft_spec` can rebuild.

    Each entry: ``target``, ``name``, then what the grafted module's ``graft_spec()`` returns: ``kind``
    (``"kd_layer"`` or ``"template_head"``) and its constructor arguments (``channels``, ``num_templates``,
    ``template_scale`` and, for KD layers, ``alpha`` and ``value_scale``; the initial scales — the trained
    ones live in the state_dict).
    """
    spec = []
    for point in graft_points(model):
        describe = getattr(point.module, "graft_spec", None)
        if describe is None:
            raise GraftError(f"cannot describe grafted {type(point.module).__name__} at {point.target!r}")
        spec.append({"target": point.target, "name": point.name, **describe()})
    return spec


def apply_graft_spec(model: nn.Module, spec: Iterable[Mapping[str, Any]]) -> list[GraftHandle]:
    """Re-create the grafts described by :func:`graft_spec` on a fresh (un-grafted) ``model``."""
    handles = []
    for entry in spec:
        kind = entry.get("kind", "kd_layer")
        cls = GRAFT_KINDS.get(kind)
        if cls is None:
            raise GraftError(f"unknown graft kind {kind!r} in graft spec entry {dict(entry)}")
        try:
            module = cls(**{k: v for k, v in entry.items() if k not in _PLACEMENT})
        except TypeError as exc:
            raise GraftError(f"graft spec entry {dict(entry)} does not fit {cls.__name__}: {exc}") from None
        handles.append(graft(model, entry["target"], module, name=entry.get("name", GRAFT_NAME)))
    return handles


def load_into_grafted(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Load a checkpoint into a grafted ``model``: all base keys strictly, graft keys when present.

    A vanilla (un-grafted, e.g. RepDistiller) state_dict loads with the graft modules left as initialised; a
    grafted one loads completely. Raises ``RuntimeError`` for any other missing or unexpected key (nothing
    is loaded then). Returns the graft keys the state_dict did not provide.
    """
    from letkd.models.weights import legacy_batchnorm_keys

    prefixes = tuple(f"{point.target}.{point.name}." for point in graft_points(model))
    expected = set(model.state_dict().keys())
    given = set(state_dict.keys())
    # BatchNorm fills in num_batches_tracked for state_dicts of old PyTorch versions (as torch's strict load)
    absent = expected - given
    absent -= legacy_batchnorm_keys(model, state_dict, absent)
    missing_base = sorted(k for k in absent if not k.startswith(prefixes))
    unexpected = sorted(given - expected)
    if missing_base or unexpected:
        raise RuntimeError(
            f"state_dict does not fit {type(model).__name__}: missing keys {missing_base[:10]}"
            f"{' …' if len(missing_base) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' …' if len(unexpected) > 10 else ''}"
        )
    return model.load_state_dict(state_dict, strict=False).missing_keys


def load_student(
    checkpoint: str | os.PathLike,
    model_name: str | None = None,
    num_classes: int | None = None,
    dataset: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the student of ``checkpoint`` and load its weights strictly; return ``(model in eval mode,
    meta)``.

    A letkd training checkpoint records the model name, number of classes, constructor kwargs
    (``config.model.kwargs``) and KD-layer grafts in ``meta``; the model is built from them and re-grafted
    before loading. Other files (RepDistiller/CRD, bare state_dicts) need ``model_name``; the number of
    classes is ``num_classes``, else the checkpoint's, else ``dataset``'s. ``meta`` is the checkpoint's with
    the resolved ``model_name`` and ``num_classes``. Raises :class:`~letkd.config.ConfigError` for a missing
    or conflicting name / class count and :class:`~letkd.checkpoints.CheckpointError` for weights that do not
    fit (with every missing, unexpected and mis-shaped key).
    """
    from letkd.checkpoints import CheckpointError, read_checkpoint
    from letkd.config import ConfigError
    from letkd.models import create_model, load_weights
    from letkd.models.weights import extract_state_dict, value_layer_files

    layers = value_layer_files(checkpoint)
    if layers:
        raise ConfigError(
            f"{checkpoint} is a student network of the letKD authors' code whose KD layers are in "
            f"{', '.join(p.name for p in layers)} (run at inference there); letkd cannot assemble them into "
            "the network, and the network alone would give wrong predictions, so it is refused"
        )
    content = read_checkpoint(checkpoint)
    state, info = extract_state_dict(content)
    meta = dict(info["meta"]) if isinstance(info.get("meta"), Mapping) else {}
    if meta.get("standalone_student") is False:
        raise ConfigError(
            f"a {meta.get('method')!r} run deploys more than its student network (see docs/methods.md); "
            "exporting or evaluating the student alone would give wrong predictions, so it is refused"
        )
    saved_name = meta.get("model_name")
    if model_name and saved_name and model_name != saved_name:
        raise ConfigError(f"--model {model_name} but the checkpoint holds a {saved_name}")
    name = model_name or saved_name
    if not name:
        raise ConfigError("--model is required for checkpoints that do not name their model")
    saved_classes = meta.get("num_classes")
    if num_classes is not None and saved_classes is not None and num_classes != saved_classes:
        raise ConfigError(f"--num-classes {num_classes} but the checkpoint holds a {saved_classes}-class net")
    classes = num_classes if num_classes is not None else saved_classes
    if classes is None and dataset is not None:
        from letkd.data import dataset_info

        classes = dataset_info(dataset).num_classes
    if classes is None:
        raise ConfigError("the checkpoint does not record its number of classes; pass --num-classes N")
    kwargs = ((meta.get("config") or {}).get("model") or {}).get("kwargs") or {}
    model = create_model(name, int(classes), **kwargs)
    grafted = meta.get("grafts") or []
    apply_graft_spec(model, grafted)
    try:
        load_weights(model, checkpoint, content=content)
    except CheckpointError as exc:
        if not grafted and any(f".{GRAFT_NAME}." in k for k in state):
            raise CheckpointError(f"{exc}\n(KD-layer weights without graft metadata: meta.grafts)") from None
        raise
    return model.eval(), meta | {"model_name": name, "num_classes": int(classes)}


class BakedGraft(nn.Module):
    """A hook-free graft for deployment: ``forward(x) = graft(base(x))``, or its first item when the graft
    returns ``(x_hat, scores)`` (the reference form keeps the training :class:`~letkd.layers.KDLayer`).

    On a token model (``grid``) a ``(B, N, C)`` base output is transformed on its patch tokens, prefix
    tokens unchanged, as the graft hook does (:func:`letkd.graft.apply_on_patches`)."""

    def __init__(self, base: nn.Module, graft: nn.Module, grid: TokenGrid | None = None) -> None:
        super().__init__()
        self.base = base
        self.graft = graft
        self.grid = grid

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base module's output ``(B, C, H, W)`` (or ``(B, N, C)`` tokens) transformed by the graft."""
        out = self.base(*args, **kwargs)
        x_hat, _ = apply_on_patches(self._x_hat_and_scores, out, self.grid)
        return out if x_hat is None else x_hat

    def _x_hat_and_scores(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The graft's ``(x_hat, scores)``; an inference form returns ``x_hat`` alone."""
        result = self.graft(feature_map)
        return result if isinstance(result, (tuple, list)) else (result, None)


#: the forms :func:`bake` can give a grafted module
BAKE_FORMS = ("fast", "reference")


def bake(model: nn.Module, form: str = "fast") -> nn.Module:
    """A deep copy of ``model`` without hooks: each grafted target becomes ``BakedGraft(target, module)``.

    Grafts that do not change the output (template heads, KD layers with ``alpha == 0``) are dropped.
    ``form="fast"`` (the default) replaces each remaining grafted module by its inference form, when it has
    one (``module.inference_form()``: a :class:`~letkd.layers.KDLayer` becomes an
    :class:`~letkd.inference_form.InferenceKDLayer`, its eval-mode BatchNorm folded in and its score map
    computed in cache-sized chunks); the baked model then computes the eval-mode function of ``model`` up to
    float rounding (≈1e-6 in float32). ``form="reference"`` keeps the grafted modules as they are: in eval
    mode that copy computes exactly what ``model`` computes. Either way ``torch.export`` / ONNX see a plain
    module tree, and ``model`` itself is not modified. State_dict keys of baked targets become
    ``<target>.base.*`` and ``<target>.graft.*``.
    """
    if form not in BAKE_FORMS:
        raise ValueError(f"bake form {form!r}: expected one of {', '.join(BAKE_FORMS)}")
    baked = copy.deepcopy(model)
    targets = sorted(grafts(baked), key=lambda p: p.count(".") + 1, reverse=True)
    grid = token_grid(baked)
    for path in targets:
        module = ungraft(baked, path)
        if not getattr(module, "modifies_output", True):
            continue
        to_inference = getattr(module, "inference_form", None) if form == "fast" else None
        if to_inference is not None:
            module = to_inference().train(module.training)
        _set_submodule(baked, path, BakedGraft(baked.get_submodule(path), module, grid))
    return baked


def export_program(
    model: nn.Module, input_size: Sequence[int], form: str = "fast"
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``bake(model, form)`` in eval mode for inputs ``(B, *input_size)``, ``B``
    dynamic."""
    baked = bake(model, form).eval()
    example = (torch.randn(2, *input_size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(baked, example, dynamic_shapes=({0: batch},))


def write_pt2(program: torch.export.ExportedProgram, path: str | os.PathLike) -> None:
    """Atomically write an exported program (``torch.export.load`` reads it)."""
    buf = io.BytesIO()
    torch.export.save(program, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_onnx(program: torch.export.ExportedProgram, path: str | os.PathLike) -> None:
    """Atomically write an exported program as ONNX (needs the ``onnx`` and ``onnxscript`` packages)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        message = "ONNX export needs the onnx and onnxscript packages: pip install letkd[onnx]"
        raise RuntimeError(message) from exc
    onnx_program = torch.onnx.export(
        program, dynamo=True, input_names=["images"], output_names=["logits"], verbose=False
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx_program.save(tmp)
        os.chmod(tmp, file_mode())  # as every other artefact (mkstemp makes it 0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    parent._modules[name] = module
