"""Model weights: find the state_dict in a checkpoint file and load it into a model, reporting mismatches.

Layouts read (docs/models.md, "Checkpoint files"): RepDistiller/CRD and letkd (``{"model": sd, ...}``, with
RepDistiller's options as an ``argparse.Namespace`` under ``"opt"``), mdistiller (``{"model": sd}`` of a
student, or of a whole distiller whose ``student.*`` entries are taken), the letKD/QuEST reference
(``{"network": sd, "epoch", "metric"}``), ``{"state_dict": sd}`` and bare state_dicts, as ``.pt``/``.pth``,
extension-less or ``.safetensors`` files. Files are read by :func:`letkd.checkpoints.read_checkpoint`
(weights-only: a file that would run code is refused).

Strict loading accepts exactly what torch's strict ``load_state_dict`` accepts: every key and shape must
match, except a BatchNorm ``num_batches_tracked`` counter that torch fills in itself because the state_dict
predates it (PyTorch <= 0.4.0, as RepDistiller's README names: no counter, no version metadata).
"""

from __future__ import annotations

import argparse
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from letkd.checkpoints import CheckpointError, read_checkpoint, save_checkpoint

# Keys under which known checkpoint layouts keep the state_dict, in lookup order. RepDistiller/CRD and
# letkd write "model"; the letKD/QuEST reference writes "network"; Lightning-style files "state_dict".
STATE_DICT_KEYS = ("model", "network", "state_dict", "model_state_dict")
# Prefixes added by wrappers (DataParallel/DDP, torch.compile) that are stripped when every key has them.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# A whole distiller's state_dict (mdistiller's "best"/"latest" files): the student's entries carry this
# prefix beside the teacher's ("teacher.") and the method's own modules.
STUDENT_PREFIX, TEACHER_PREFIX = "student.", "teacher."
# The letKD authors' name of one network's file (distillation/algorithms/algorithm.py, save_network).
_AUTHOR_FILE = re.compile(r"^(?P<net>.+)_net_epoch(?P<epoch>\d+)(?P<suffix>(?:\.best)?)$")
# Training-state entries never returned as metadata (large, and only meaningful to the trainer).
TRAINING_STATE_KEYS = frozenset({"optimizer", "scheduler", "lr_scheduler", "scaler", "rng", "rng_state"})
_MAX_LISTED = 20


def extract_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a loaded checkpoint into ``(state_dict, metadata)``.

    Accepts ``{"model": sd, ...}`` (RepDistiller/CRD, mdistiller, letkd), ``{"network": sd, ...}``
    (letKD/QuEST reference), ``{"state_dict": sd}`` and a bare state_dict. Wrapper prefixes (``module.``)
    are removed; of a whole distiller's state_dict (``student.*`` beside ``teacher.*``, mdistiller) the
    student's part is returned (``metadata["part"] = "student"``). The state_dict keeps its version
    metadata (``_metadata``), with keys renamed alike. Metadata keeps the other entries that hold no bulky
    tensors (optimizer/scheduler/RNG states are dropped); one-element tensors and numpy scalars, such as
    RepDistiller's ``accuracy``, become Python numbers and an ``argparse.Namespace`` (RepDistiller's
    ``opt``) a dict; ``metadata["format"]`` names the layout.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    key = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)), None)
    if key is None:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return _student_part(_strip_wrapper_prefix(obj), {"format": "state_dict"})
        raise CheckpointError(
            f"no state_dict found: expected a bare state_dict or one of the keys {list(STATE_DICT_KEYS)}, "
            f"got keys {sorted(map(str, obj))[:_MAX_LISTED]}"
        )
    state = obj[key]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"entry {key!r} is not a state_dict: non-tensor values at {bad[:5]}")
    meta: dict[str, Any] = {"format": key}
    for k, v in obj.items():
        if k != key and k not in TRAINING_STATE_KEYS:
            plain = _plain_metadata(v)
            if plain is not _SKIP:
                meta[str(k)] = plain
    return _student_part(_strip_wrapper_prefix(state), meta)


def legacy_batchnorm_keys(
    model: nn.Module, state: Mapping[str, torch.Tensor], missing: Iterable[str]
) -> set[str]:
    """The ``missing`` keys that torch's strict ``load_state_dict`` fills in itself: the
    ``num_batches_tracked`` counter of a BatchNorm that tracks running statistics, when the state_dict's
    version metadata (``state._metadata``) for that module is absent or older than 2 (state_dicts of
    PyTorch <= 0.4.0 have neither the counter nor the metadata)."""
    versions = getattr(state, "_metadata", None) or {}
    filled = set()
    for key in missing:
        prefix, _, name = key.rpartition(".")
        if name != "num_batches_tracked":
            continue
        module = model.get_submodule(prefix) if prefix else model
        if not isinstance(module, nn.modules.batchnorm._NormBase) or not module.track_running_stats:
            continue
        version = (versions.get(prefix) or {}).get("version")
        if version is None or version < 2:
            filled.add(key)
    return filled


def load_weights(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, content: Any = None
) -> dict[str, Any]:
    """Load the weights in ``path`` into ``model`` and return the file's metadata (epoch, accuracy, …).

    ``content`` is the file as already read by :func:`~letkd.checkpoints.read_checkpoint` (to read it once).

    With ``strict=True`` (default) any missing key, unexpected key or shape conflict raises a
    :class:`CheckpointError` listing all three; a BatchNorm counter that torch fills in for an old
    state_dict (:func:`legacy_batchnorm_keys`) is not missing. With ``strict=False`` the matching entries
    are loaded and the returned dict also holds ``missing_keys``, ``unexpected_keys`` and
    ``shape_mismatches``.
    """
    state, meta = extract_state_dict(read_checkpoint(path) if content is None else content)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    filled = legacy_batchnorm_keys(model, state, missing)
    missing = [k for k in missing if k not in filled]
    unexpected = [k for k in state if k not in own]
    conflicts = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if strict and (missing or unexpected or conflicts):
        raise CheckpointError(
            f"checkpoint {path} does not match {type(model).__name__}:\n"
            + _mismatch_report(missing, unexpected, conflicts)
        )
    conflicting = {k for k, _, _ in conflicts}
    usable = _keyed(((k, v) for k, v in state.items() if k in own and k not in conflicting), state)
    model.load_state_dict(usable, strict=strict)
    if not strict:
        meta["missing_keys"] = missing
        meta["unexpected_keys"] = unexpected
        meta["shape_mismatches"] = [
            {"key": k, "checkpoint": list(c), "model": list(m)} for k, c, m in conflicts
        ]
    return meta


def value_layer_files(path: str | os.PathLike) -> list[Path]:
    """For a network file of the letKD authors' code (``<net>_net_epoch<n>[.best]``), the ``valueLayer_*``
    files of the same epoch beside it, in which that code keeps a student's KD layers (their BoW predictors
    and value layers are networks of their own, run at inference too); empty for any other file."""
    path = Path(path)
    match = _AUTHOR_FILE.match(path.name)
    if match is None or match["net"].startswith("valueLayer"):
        return []
    pattern = f"valueLayer_*_net_epoch{match['epoch']}{match['suffix']}"
    return sorted(p for p in path.parent.glob(pattern) if _AUTHOR_FILE.match(p.name))


def save_weights(model: nn.Module, path: str | os.PathLike, **metadata: Any) -> Path:
    """Atomically write ``{"model": state_dict, **metadata}`` (the layout :func:`load_weights` reads)."""
    if "model" in metadata:
        raise ValueError("metadata may not use the key 'model'")
    save_checkpoint({"model": model.state_dict(), **metadata}, path)
    return Path(path)


# ---------------------------------------------------------------------------------------------------------


_SKIP = object()


def _plain_metadata(value: Any) -> Any:
    """``value`` with scalar tensors turned into numbers and namespaces into dicts, or ``_SKIP`` if it holds
    any larger tensor."""
    if isinstance(value, argparse.Namespace):
        return _plain_metadata(vars(value))
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else _SKIP
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            plain = _plain_metadata(v)
            if plain is _SKIP:
                return _SKIP
            out[k] = plain
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain_metadata(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else type(value)(items)
    return value


def _keyed(items: Iterable[tuple[str, torch.Tensor]], source: Mapping, prefix: str = "") -> OrderedDict:
    """A state_dict of ``items`` carrying ``source``'s version metadata, its keys without ``prefix``."""
    state = OrderedDict(items)
    versions = getattr(source, "_metadata", None)
    if versions is not None:
        state._metadata = OrderedDict(  # type: ignore[attr-defined]
            (k[len(prefix) :] if k != prefix[:-1] else "", v)
            for k, v in versions.items()
            if not prefix or k == prefix[:-1] or k.startswith(prefix)
        )
    return state


def _without_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> OrderedDict:
    """The entries of ``state`` under ``prefix``, renamed without it (version metadata alike)."""
    return _keyed(((k[len(prefix) :], v) for k, v in state.items() if k.startswith(prefix)), state, prefix)


def _strip_wrapper_prefix(state: Mapping[str, torch.Tensor]) -> OrderedDict:
    state = _keyed(state.items(), state)
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = _without_prefix(state, prefix)
                changed = True
    return state


def _student_part(state: OrderedDict, meta: dict[str, Any]) -> tuple[OrderedDict, dict[str, Any]]:
    """``(student's entries, meta)`` of a whole distiller's state_dict, else ``(state, meta)`` unchanged."""
    keys = list(state)
    students = [k for k in keys if k.startswith(STUDENT_PREFIX)]
    if students and (len(students) == len(keys) or any(k.startswith(TEACHER_PREFIX) for k in keys)):
        return _without_prefix(state, STUDENT_PREFIX), meta | {"part": "student"}
    return state, meta


def _mismatch_report(
    missing: list[str], unexpected: list[str], conflicts: list[tuple[str, tuple, tuple]]
) -> str:
    def listing(title: str, items: list[str]) -> str:
        if not items:
            return f"  {title}: none"
        shown = "\n".join(f"    {item}" for item in items[:_MAX_LISTED])
        more = f"\n    … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
        return f"  {title} ({len(items)}):\n{shown}{more}"

    shapes = [f"{k}: checkpoint {list(c)} vs model {list(m)}" for k, c, m in conflicts]
    return "\n".join(
        [
            listing("missing keys (in the model, not in the checkpoint)", missing),
            listing("unexpected keys (in the checkpoint, not in the model)", unexpected),
            listing("shape conflicts", shapes),
        ]
    )
