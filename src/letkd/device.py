"""Which device a run uses: ``auto`` picks CUDA (the local rank's GPU), else MPS, else CPU."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The requested device does not exist on this machine (or is not a device name at all)."""


def select_device(preference: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto``/None → ``cuda:LOCAL_RANK`` if available, else ``mps``, else ``cpu``; others are used as is
    (a bare ``cuda`` becomes ``cuda:LOCAL_RANK``).

    Raises :class:`DeviceError` (before any work is done) for a device this machine does not have.
    """
    pref = str(preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(pref)
    except RuntimeError:
        raise DeviceError(f"unknown device {pref!r}: use cpu, cuda, cuda:N, mps or auto") from None
    fix = "use --device cpu or --device auto (train.device=cpu or auto)"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {pref!r} requested but no CUDA GPU is available here: {fix}")
        if device.index is None:
            device = torch.device("cuda", local_rank % count)
        elif device.index >= count:
            raise DeviceError(f"device {pref!r} requested but this machine has {count} CUDA GPU(s): {fix}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {pref!r} requested but MPS is not available here: {fix}")
    return device
