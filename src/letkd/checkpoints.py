"""Checkpoint files: the one safe reader and the one atomic writer.

Every checkpoint (training state, model weights, a RepDistiller, mdistiller or letKD reference file) is read
by :func:`read_checkpoint`: ``.safetensors`` files with safetensors, anything else with
``torch.load(path, map_location="cpu", weights_only=True)``, so a file that needs arbitrary code to unpickle
is refused, never executed. Besides tensors and plain containers, exactly these globals are allowed, each a
plain-data constructor that imports and runs nothing else: numpy scalars and dtypes (an accuracy saved as
``np.float64``, under numpy 1's module name too) and ``argparse.Namespace`` (the options RepDistiller pickles
into its ``*_best.pth`` / ``*_last.pth`` files; its values go through the same restricted unpickler).
Storages saved on a GPU (``cuda:0``) are loaded onto the CPU, in the zip and the legacy (pre-1.6) formats.
:func:`save_checkpoint` writes through a temporary file and an atomic rename, so a crash never leaves half a
file. What a training checkpoint holds is :mod:`letkd.engine.state`; how a
state_dict is found in a file and loaded into a model is :mod:`letkd.models.weights`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from letkd.utils import atomic_write_bytes

__all__ = ["CheckpointError", "read_checkpoint", "save_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint file could not be used: missing, refused, unreadable, or not matching the model."""


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Safely deserialise ``path`` (``.safetensors`` or a torch pickle) onto the CPU.

    Raises :class:`CheckpointError` if the file is missing, corrupt, or would run code when unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with _allow_plain_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _needs_code(exc):
            raise CheckpointError(
                f"checkpoint {path} refused: unpickling it would run code ({_unpickler_reason(exc)}); only "
                "tensors and plain containers are loaded. If you trust the file, re-save its state_dict with "
                "torch.save(model.state_dict(), ...) from the code that made it"
            ) from exc
        raise CheckpointError(_unreadable(path, _unpickler_detail(exc))) from exc
    except Exception as exc:  # torch and safetensors raise many types for truncated or foreign files
        raise CheckpointError(_unreadable(path, f"{type(exc).__name__}: {exc}")) from exc


def save_checkpoint(obj: Any, *paths: str | os.PathLike) -> None:
    """Serialise ``obj`` with ``torch.save`` once and write it to each of ``paths`` atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    for path in paths:
        atomic_write_bytes(path, data)


# ---------------------------------------------------------------------------------------------------------


def _unreadable(path: Path, detail: str) -> str:
    return f"cannot read checkpoint {path} (corrupt, or not a torch file): {detail}"


def _allow_plain_globals() -> contextlib.AbstractContextManager:
    """Context allowing :func:`_plain_globals` in weights-only loads (torch >= 2.5; a no-op before)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals(_plain_globals()) if safe_globals else contextlib.nullcontext()


@functools.cache
def _plain_globals() -> list:
    """``argparse.Namespace`` and the constructors of numpy scalars and numeric dtypes: they build plain
    data and import or run nothing else. Under numpy 2, numpy 1's name of the scalar constructor
    (``numpy.core.multiarray.scalar``) is allowed too where torch accepts named entries."""
    core = getattr(np, "_core", None) or np.core
    allowed: list = [argparse.Namespace, core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, f"{n}DType") for n in _NUMPY_NUMERIC if hasattr(dtypes, f"{n}DType")]
    legacy = (core.multiarray.scalar, "numpy.core.multiarray.scalar")
    if getattr(np, "_core", None) is not None and _accepts_named_globals(legacy):  # numpy 2
        allowed.append(legacy)
    return allowed


def _accepts_named_globals(entry: tuple) -> bool:
    """Whether this torch allows a global under a given name (``(obj, "module.name")``, torch >= 2.6)."""
    try:
        from torch._weights_only_unpickler import _get_user_allowed_globals

        with torch.serialization.safe_globals([entry]):
            return entry[1] in _get_user_allowed_globals()
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


_NUMPY_NUMERIC = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                  "Float16", "Float32", "Float64", "LongLong", "ULongLong", "Long", "ULong")  # fmt: skip


def _needs_code(exc: Exception) -> bool:
    """Whether torch's weights-only unpickler stopped at a global (a class or callable to import/run)."""
    return bool(
        re.search(r"unsupported global|not an allowed global|whose module \S+ is blocked", str(exc), re.I)
    )


def _unpickler_detail(exc: Exception) -> str:
    """The specific part of torch's weights-only error ("Unsupported operand 0"), never its advice (which
    suggests ``weights_only=False``, i.e. running the file's code)."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(exc), re.S)
    if match:
        return match.group(1)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", str(exc)) if p.strip()]
    plain = [p for p in paragraphs if not re.search(r"weights_only|torch\.load|safe_globals", p)]
    return " ".join(plain[0].split()) if plain else "not a file of tensors and plain containers"


def _unpickler_reason(exc: Exception) -> str:
    """What the file needs, from torch's weights-only error: "it needs posix.system"."""
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(exc))
    return (
        f"it needs {match.group(1)}" if match else "it holds objects other than tensors and plain containers"
    )
