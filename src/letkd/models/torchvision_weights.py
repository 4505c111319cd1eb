"""ImageNet teachers by name, through torchvision's weights API: ``checkpoint: torchvision:IMAGENET1K_V1``.

The name is a weights entry of the teacher's torchvision builder (``torchvision:resnet34`` →
``ResNet34_Weights.IMAGENET1K_V1``), or a full ``torchvision:ResNet34_Weights.IMAGENET1K_V1``. The file is
fetched by torchvision (``WeightsEnum.get_state_dict(check_hash=True)``: torch.hub's download into
``$TORCH_HOME/hub/checkpoints/``, refused unless its SHA-256 starts with the hash in the file name) and, when
already there, its hash is checked here before use. Without network access the error names the file to
place and the folder to place it in. These are the teachers of the paper's Table 2: ResNet-34 (73.31 /
91.42) and ResNet-50 (76.13 / 92.86), torchvision's ``IMAGENET1K_V1`` figures.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from letkd.config import ConfigError

PREFIX = "torchvision:"
#: seconds without data before a download is given up
TIMEOUT_S = 60.0


class WeightsError(ConfigError):
    """A torchvision weights name that is unknown, cannot be fetched, or whose file is corrupt."""


def is_weights_name(spec: str | None) -> bool:
    """Whether a checkpoint spec names torchvision weights (``torchvision:IMAGENET1K_V1``)."""
    return bool(spec) and str(spec).startswith(PREFIX) and str(spec)[len(PREFIX) :].split(".")[-1].isupper()


def weights_for(spec: str, arch: str) -> Any:
    """The torchvision ``WeightsEnum`` member ``spec`` names for the zoo model ``arch``."""
    from torchvision.models import get_model_weights, get_weight

    name = spec[len(PREFIX) :]
    builder = arch.removeprefix(PREFIX)
    try:
        if "." in name:
            return get_weight(name)
        enum = get_model_weights(builder)
    except (ValueError, KeyError, AttributeError) as exc:
        raise WeightsError(
            f"teacher.checkpoint {spec}: {exc} (the teacher must be a torchvision model)"
        ) from None
    if name not in enum.__members__:
        known = ", ".join(enum.__members__)
        raise WeightsError(f"teacher.checkpoint {spec}: {builder} has no weights {name!r}; known: {known}")
    return enum[name]


def weights_file(weights: Any) -> Path:
    """Where torch.hub keeps the file of ``weights``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _hash_prefix(path: Path) -> str | None:
    found = torch.hub.HASH_REGEX.search(path.name)
    return found.group(1) if found else None


def fetch_weights(weights: Any, progress: bool = True) -> Path:
    """The verified local file of ``weights`` (a torchvision ``WeightsEnum`` member), fetched if needed."""
    path = weights_file(weights)
    prefix = _hash_prefix(path)
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if prefix and not digest.startswith(prefix):
            raise WeightsError(
                f"{path} is corrupt or not {weights} (its SHA-256 {digest[:12]}… does not start with "
                f"{prefix}); delete it to fetch it again"
            )
        return path
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT_S)  # torch.hub's urlopen has none: a dead link must not hang forever
    try:
        weights.get_state_dict(
            progress=progress, check_hash=True, weights_only=True
        )  # torch.hub: fetch + hash
    except RuntimeError as exc:  # torch.hub's hash mismatch
        raise WeightsError(
            f"{weights}: the file fetched from {weights.url} failed its hash check ({exc})"
        ) from None
    except OSError as exc:  # no network (URLError is an OSError), a refused connection, a full disk...
        reason = getattr(exc, "reason", None) or exc
        hash_text = f" (its SHA-256 starts with {prefix})" if prefix else ""
        raise WeightsError(
            f"cannot fetch {weights} from {weights.url} ({reason}); place that file, {path.name}{hash_text}, "
            f"in {path.parent}/ (or set $TORCH_HOME to the folder above hub/checkpoints/ that holds it)"
        ) from None
    finally:
        socket.setdefaulttimeout(before)
    return path


def resolve_weights_checkpoint(spec: str, arch: str, progress: bool = True) -> Path:
    """The verified file of ``teacher.checkpoint: torchvision:<WEIGHTS>`` for the teacher ``arch``."""
    return fetch_weights(weights_for(spec, arch), progress)


def published_top1(spec: str, arch: str) -> tuple[float, float] | None:
    """torchvision's ImageNet-1K (top-1, top-5) of the weights, where it gives them."""
    metrics = weights_for(spec, arch).meta.get("_metrics", {}).get("ImageNet-1K", {})
    return (float(metrics["acc@1"]), float(metrics["acc@5"])) if "acc@1" in metrics else None
