"""Supervision artefacts: one ``.safetensors`` file per fitted object with JSON provenance, and a cache.

The file holds the module's buffers as tensors; its header metadata key ``letkd`` holds a JSON object with
the artefact ``kind`` (``codebook`` / ``subclass``), what identifies it (teacher hash, tap, pooling, dataset,
K, seed, …) and how it was made (rows, library versions, seconds, cluster-size statistics).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from letkd.supervision.codebook import Codebook
from letkd.supervision.subclass import SubclassCodebook
from letkd.utils import atomic_write_bytes

METADATA_KEY = "letkd"
FORMAT_VERSION = 1


class ArtifactMismatchError(ValueError):
    """A stored artefact's metadata differs from what the caller expects (wrong teacher, tap, K, …)."""


def _canonical(value: Any) -> Any:
    """JSON round trip: tuples become lists, so stored and expected values compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def cache_key(fields: dict[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON (sorted keys, no spaces) of the identifying ``fields``."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a fit (torch, numpy, faiss, scikit-learn, letkd)."""
    import numpy

    import letkd

    versions = {"letkd": letkd.__version__, "torch": torch.__version__, "numpy": numpy.__version__}
    for name, module in (("faiss", "faiss"), ("sklearn", "sklearn")):
        try:
            versions[name] = __import__(module).__version__
        except ImportError:
            versions[name] = "absent"
    return versions


def save_artifact(module: nn.Module, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``module``'s buffers and ``meta`` (JSON-serialisable) atomically to one ``.safetensors`` file."""
    from safetensors.torch import save

    kind = getattr(module, "kind", None)
    if kind not in _BUILDERS:
        raise TypeError(
            f"cannot save {type(module).__name__}: not a supervision module ({', '.join(_BUILDERS)})"
        )
    header = {**meta, "kind": kind, "format_version": FORMAT_VERSION}
    if isinstance(module, SubclassCodebook):
        header["num_classes"] = module.num_classes
    tensors = {name: t.detach().cpu().contiguous() for name, t in module.state_dict().items()}
    data = save(tensors, metadata={METADATA_KEY: json.dumps(_canonical(header), sort_keys=True)})
    return atomic_write_bytes(path, data)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON provenance stored in an artefact file, without loading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path} is not a letkd supervision artefact (no '{METADATA_KEY}' metadata)")
    return json.loads(raw)


def check_expected(meta: dict[str, Any], expect: dict[str, Any], source: str = "artefact") -> None:
    """Raise :class:`ArtifactMismatchError` naming each field of ``expect`` that ``meta`` stores otherwise."""
    missing = object()
    diffs = []
    for key, want in sorted(expect.items()):
        have = meta.get(key, missing)
        if have is missing:
            diffs.append(f"  {key}: not stored (expected {_canonical(want)!r})")
        elif _canonical(have) != _canonical(want):
            diffs.append(f"  {key}: stored {have!r}, expected {_canonical(want)!r}")
    if diffs:
        raise ArtifactMismatchError(f"{source} does not match what was asked for:\n" + "\n".join(diffs))


def load_artifact(path: str | os.PathLike, expect: dict[str, Any] | None = None) -> tuple[nn.Module, dict]:
    """Load an artefact as its module (on CPU) and its metadata; refuse it if ``expect`` differs from it."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if expect:
        check_expected(meta, expect, source=str(path))
    kind = meta.get("kind")
    if kind not in _BUILDERS:
        raise ValueError(f"{path}: unknown artefact kind {kind!r}")
    module = _BUILDERS[kind](load_file(str(path), device="cpu"), meta)
    module.fit_info = meta.get("fit_info", {})
    return module, meta


def _build_codebook(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Codebook:
    return Codebook(tensors["centers"], cluster_sizes=tensors["cluster_sizes"])


def _build_subclass(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> SubclassCodebook:
    return SubclassCodebook(
        tensors["lda_scalings"],
        tensors["lda_xbar"],
        tensors["centers"],
        tensors["score_matrix"],
        num_classes=int(meta["num_classes"]),
    )


_BUILDERS: dict[str, Callable[[dict[str, torch.Tensor], dict[str, Any]], nn.Module]] = {
    "codebook": _build_codebook,
    "subclass": _build_subclass,
}


@dataclass
class CachedArtifact:
    """Result of :meth:`ArtifactCache.get_or_fit`: module, metadata, file, and whether it was reused."""

    module: nn.Module
    meta: dict[str, Any]
    path: Path
    cached: bool


FitResult = nn.Module | tuple[nn.Module, dict[str, Any]]


class ArtifactCache:
    """A folder of artefacts addressed by the hash of their identifying fields; a repeated fit is a no-op."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path_for(self, kind: str, key_fields: dict[str, Any]) -> Path:
        """Where the artefact of ``kind`` identified by ``key_fields`` lives."""
        return self.root / f"{kind}-{cache_key({'kind': kind, **key_fields})[:24]}.safetensors"

    def get(self, kind: str, key_fields: dict[str, Any]) -> CachedArtifact | None:
        """The cached artefact, or None when it has not been fitted yet."""
        path = self.path_for(kind, key_fields)
        if not path.is_file():
            return None
        module, meta = load_artifact(path, expect={"kind": kind, **key_fields})
        return CachedArtifact(module, meta, path, cached=True)

    def get_or_fit(
        self, kind: str, key_fields: dict[str, Any], fit_fn: Callable[[], FitResult]
    ) -> CachedArtifact:
        """Load the artefact if cached, else call ``fit_fn()`` (module, or (module, extra meta)) and save it.

        The stored metadata is ``key_fields`` + the extra metadata + ``fit_info`` of the module + library
        versions + fit seconds.
        """
        found = self.get(kind, key_fields)
        if found is not None:
            return found
        t0 = time.perf_counter()
        result = fit_fn()
        module, extra = result if isinstance(result, tuple) else (result, {})
        meta = {
            **extra,
            **key_fields,
            "fit_seconds": round(time.perf_counter() - t0, 3),
            "fit_info": getattr(module, "fit_info", {}),
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = save_artifact(module, self.path_for(kind, key_fields), meta)
        return CachedArtifact(module, read_metadata(path), path, cached=False)
