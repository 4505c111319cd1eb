"""What a training checkpoint holds, and capturing / restoring it exactly (weights, optimizer, counters, RNG).

A training checkpoint is a plain dict (read with :func:`letkd.checkpoints.read_checkpoint`, weights-only)::

    {"model": student state_dict, "distiller": auxiliary modules' state_dict, "optimizer": ...,
     "scheduler": {"type", "next_epoch", "lr"}, "scaler": ... | None, "epoch": last completed epoch (0-based),
     "best_top1": float | None, "best_epoch": int, "wall_seconds": float,
     "rng": {"torch", "numpy", "python", "cuda"}, "metrics": [one dict per epoch],
     "meta": {"model_name", "num_classes", "input_size", "config", "grafts", ...}}
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from letkd.checkpoints import CheckpointError, read_checkpoint

if TYPE_CHECKING:
    from letkd.methods.base import Distiller

REQUIRED_KEYS = ("model", "optimizer", "epoch", "meta")


@dataclass
class Progress:
    """How far a run has got: the counters a checkpoint carries besides the weights."""

    last_epoch: int = -1  # last completed epoch (0-based)
    best_top1: float = -math.inf
    best_epoch: int = -1
    wall_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per completed epoch


def load_checkpoint(path: str | Path, required: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """Read a training checkpoint; raise :class:`CheckpointError` if it is missing, corrupt, not a dict or
    lacks one of ``required``."""
    state = read_checkpoint(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    missing = [k for k in required if k not in state]
    if missing:
        listed = ", ".join(missing)
        raise CheckpointError(f"checkpoint {path} lacks {listed} (not a letkd training checkpoint)")
    return state


def capture_state(
    distiller: Distiller,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    progress: Progress,
    schedule_type: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The checkpoint dict of a run (see the module docstring); the teacher's weights are not included."""
    aux = {
        k: v
        for k, v in distiller.state_dict().items()
        if not (k.startswith("student.") or k.startswith("teacher."))
    }
    return {
        "model": distiller.student.state_dict(),
        "distiller": aux,
        "optimizer": optimizer.state_dict(),
        "scheduler": {
            "type": schedule_type,
            "next_epoch": progress.last_epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
        },
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": progress.last_epoch,
        "best_top1": progress.best_top1 if math.isfinite(progress.best_top1) else None,
        "best_epoch": progress.best_epoch,
        "wall_seconds": progress.wall_seconds,
        "rng": capture_rng_state(),
        "metrics": progress.history,
        "meta": meta,
    }


def restore_state(
    state: dict[str, Any],
    distiller: Distiller,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> Progress:
    """Load a :func:`capture_state` dict into the distiller, optimizer, scaler and the global RNGs; return
    the run's :class:`Progress`. Weights that do not fit raise :class:`CheckpointError`."""
    full = distiller.state_dict()
    full.update({f"student.{k}": v for k, v in state["model"].items()})
    full.update(state.get("distiller", {}))
    try:
        distiller.load_state_dict(full, strict=True)
        distiller.student.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint does not match this model/method: {exc}") from None
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if "rng" in state:
        restore_rng_state(state["rng"])
    return Progress(
        last_epoch=int(state["epoch"]),
        best_top1=state["best_top1"] if state.get("best_top1") is not None else -math.inf,
        best_epoch=int(state.get("best_epoch", -1)),
        wall_seconds=float(state.get("wall_seconds", 0.0)),
        history=list(state.get("metrics", [])),
    )


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


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted ``key: old -> new`` for every value that differs between two config dicts."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes
