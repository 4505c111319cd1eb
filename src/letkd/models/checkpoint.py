"""Loading and saving model weights: RepDistiller/CRD, letKD reference, letkd and bare state_dict files.

Files are always read with ``torch.load(path, map_location="cpu", weights_only=True)``: a file that
needs arbitrary code to unpickle is refused, never executed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from letkd.utils import atomic_torch_save

# Keys under which known checkpoint layouts keep the state_dict, in lookup order. RepDistiller/CRD and
# letkd write "model"; the letKD/QuEST reference writes "network"; Lightning-style files "state_dict".
STATE_DICT_KEYS = ("model", "network", "state_dict", "model_state_dict")
# Prefixes added by wrappers (DataParallel/DDP, torch.compile) that are stripped when every key has them.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Training-state entries never returned as metadata (large, and only meaningful to the trainer).
TRAINING_STATE_KEYS = frozenset({"optimizer", "scheduler", "lr_scheduler", "scaler", "rng", "rng_state"})
_MAX_LISTED = 20


class CheckpointError(RuntimeError):
    """A checkpoint file could not be used: refused, unreadable, or not matching the model."""


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Safely deserialise ``path`` (``.safetensors`` or a torch pickle) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with _allow_numpy_scalars():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _needs_code(exc):
            raise CheckpointError(
                f"cannot read checkpoint {path} (damaged or not a torch file): {_unpickler_detail(exc)}"
            ) from exc
        raise CheckpointError(
            f"refused to load {path}: unpickling it would execute code (it holds objects other than "
            f"tensors and plain containers{_unpickler_reason(exc)}). If you trust the file, re-save its "
            f"state_dict with torch.save(model.state_dict(), ...) from the code that made it."
        ) from exc
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise CheckpointError(
            f"cannot read checkpoint {path} (damaged or not a torch file): {type(exc).__name__}: {exc}"
        ) from exc


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


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, Any]:
    """Load the weights in ``path`` into ``model`` and return the file's metadata (epoch, accuracy, …).

    With ``strict=True`` (default) any missing key, unexpected key or shape conflict raises a
    :class:`CheckpointError` listing all three. With ``strict=False`` the matching entries are loaded and
    the returned dict also holds ``missing_keys``, ``unexpected_keys`` and ``shape_mismatches``.
    """
    state, meta = extract_state_dict(read_checkpoint(path))
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
    return atomic_torch_save({"model": model.state_dict(), **metadata}, path)


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


def _allow_numpy_scalars() -> contextlib.AbstractContextManager:
    """Context allowing numpy scalars in weights-only loads (torch >= 2.5; a no-op before)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals(_numpy_scalar_globals()) if safe_globals else contextlib.nullcontext()


def _numpy_scalar_globals() -> list:
    """Constructors of numpy scalars and numeric dtypes, allowed so that metadata such as an accuracy saved
    as ``np.float64`` loads; they build plain numbers and import or run nothing else."""
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, f"{n}DType") for n in _NUMPY_NUMERIC if hasattr(dtypes, f"{n}DType")]
    return allowed


_NUMPY_NUMERIC = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                  "Float16", "Float32", "Float64", "LongLong", "ULongLong", "Long", "ULong")  # fmt: skip


def _needs_code(exc: Exception) -> bool:
    """Whether torch's weights-only unpickler stopped at a global (a class or callable to import/run)."""
    return bool(re.search(r"Unsupported global|not an allowed global", str(exc)))


def _unpickler_detail(exc: Exception) -> str:
    """The specific part of torch's weights-only error ("Unsupported operand 0"), else the whole text."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(exc), re.S)
    return match.group(1) if match else str(exc)


def _unpickler_reason(exc: Exception) -> str:
    """The "Unsupported global: …" part of torch's weights-only error, if present."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return f"; it needs {match.group(1)}" if match else ""


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
