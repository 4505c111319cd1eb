"""Training checkpoints: atomic save, validated load, and the RNG states needed for exact resume.

A checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``)::

    {"model": student state_dict, "distiller": distiller state_dict, "optimizer": ..., "scheduler": {...},
     "scaler": ... | None, "epoch": last completed epoch (0-based), "best_top1": float, "best_epoch": int,
     "rng": {"torch", "numpy", "python", "cuda"}, "metrics": [one dict per epoch],
     "meta": {"model_name", "num_classes", "input_size", "config", "grafts", ...}}
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from letkd.models.checkpoint import CheckpointError
from letkd.utils import atomic_write_bytes

__all__ = ["CheckpointError", "capture_rng_state", "load_checkpoint", "restore_rng_state", "save_checkpoint"]

REQUIRED_KEYS = ("model", "optimizer", "epoch", "meta")


def save_checkpoint(state: dict[str, Any], *paths: str | Path) -> None:
    """Serialise ``state`` once and write it to each of ``paths`` atomically (temporary file + rename),
    so a crash never leaves half a file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    for path in paths:
        atomic_write_bytes(path, data)


def load_checkpoint(path: str | Path, required: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``, CPU); raise :class:`CheckpointError` if it is
    missing, corrupt or lacks one of ``required``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)} (not a letkd training checkpoint)"
        )
    return state


def capture_rng_state() -> dict[str, Any]:
    """The global torch, CUDA, numpy and python RNG states, in types ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
