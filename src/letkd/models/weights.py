"""Model weights: find the state_dict in a checkpoint file and load it into a model, reporting mismatches.

Layouts read: RepDistiller/CRD and letkd (``{"model": sd, ...}``), the letKD/QuEST reference
(``{"network": sd, ...}``), ``{"state_dict": sd}`` and bare state_dicts, as ``.pt``/``.pth`` or
``.safetensors``. Files are read by :func:`letkd.checkpoints.read_checkpoint` (weights-only: a file that
would run code is refused).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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
# Training-state entries never returned as metadata (large, and only meaningful to the trainer).
TRAINING_STATE_KEYS = frozenset({"optimizer", "scheduler", "lr_scheduler", "scaler", "rng", "rng_state"})
_MAX_LISTED = 20


def extract_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a loaded checkpoint into ``(state_dict, metadata)``.

    Accepts ``{"model": sd, ...}`` (RepDistiller/CRD, letkd), ``{"network": sd, ...}`` (letKD/QuEST
    reference), ``{"state_dict": sd}`` and a bare state_dict. Wrapper prefixes (``module.``) are removed.
    Metadata keeps the other entries that hold no bulky tensors (optimizer/scheduler/RNG states are
    dropped); one-element tensors and numpy scalars, such as RepDistiller's ``accuracy``, become Python
    numbers; ``metadata["format"]`` names the layout.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    key = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)), None)
    if key is None:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return _strip_wrapper_prefix(dict(obj)), {"format": "state_dict"}
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
    return _strip_wrapper_prefix(dict(state)), meta


def load_weights(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, content: Any = None
) -> dict[str, Any]:
    """Load the weights in ``path`` into ``model`` and return the file's metadata (epoch, accuracy, …).

    ``content`` is the file as already read by :func:`~letkd.checkpoints.read_checkpoint` (to read it once).

    With ``strict=True`` (default) any missing key, unexpected key or shape conflict raises a
    :class:`CheckpointError` listing all three. With ``strict=False`` the matching entries are loaded and
    the returned dict also holds ``missing_keys``, ``unexpected_keys`` and ``shape_mismatches``.
    """
    state, meta = extract_state_dict(read_checkpoint(path) if content is None else content)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
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
    usable = {k: v for k, v in state.items() if k in own and k not in conflicting}
    model.load_state_dict(usable, strict=strict)
    if not strict:
        meta["missing_keys"] = missing
        meta["unexpected_keys"] = unexpected
        meta["shape_mismatches"] = [
            {"key": k, "checkpoint": list(c), "model": list(m)} for k, c, m in conflicts
        ]
    return meta


def save_weights(model: nn.Module, path: str | os.PathLike, **metadata: Any) -> Path:
    """Atomically write ``{"model": state_dict, **metadata}`` (the layout :func:`load_weights` reads)."""
    if "model" in metadata:
        raise ValueError("metadata may not use the key 'model'")
    save_checkpoint({"model": model.state_dict(), **metadata}, path)
    return Path(path)


# ---------------------------------------------------------------------------------------------------------


_SKIP = object()


def _plain_metadata(value: Any) -> Any:
    """``value`` with scalar tensors turned into numbers, or ``_SKIP`` if it holds any larger tensor."""
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


def _strip_wrapper_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


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
