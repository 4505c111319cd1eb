"""Which device a run uses: ``auto`` picks CUDA (the local rank's GPU), else MPS, else CPU."""

from __future__ import annotations

import torch


def select_device(preference: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto``/None → ``cuda:LOCAL_RANK`` if available, else ``mps``, else ``cpu``; others are used as is
    (a bare ``cuda`` becomes ``cuda:LOCAL_RANK``)."""
    pref = str(preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return device
