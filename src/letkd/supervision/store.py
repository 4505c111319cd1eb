"""Supervision artefacts: one ``.safetensors`` file per fitted object with JSON provenance, and a cache.

The file holds the module's buffers as tensors; its header metadata key ``letkd`` holds a JSON object with
the artefact ``kind`` (``codebook`` / ``subclass``), what identifies it (teacher hash, tap, pooling, dataset,
K, seed, …), how it was made (rows, library versions, seconds, cluster-size statistics) and
``data_sha256``, a checksum of the tensors verified on load (files written before it existed load
unchecked). The cache repairs itself: a damaged entry is moved aside with a warning and fitted again.
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
from letkd.supervision.errors import ArtifactMismatchError, CorruptArtifactError
from letkd.supervision.lock import EntryLock
from letkd.supervision.repair import move_aside, remove_stale_temps, report_stale, warn
from letkd.supervision.subclass import SubclassCodebook
from letkd.utils import atomic_write_bytes

METADATA_KEY = "letkd"
FORMAT_VERSION = 1
CHECKSUM_KEY = "data_sha256"


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


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of named tensors: name, dtype, shape and bytes of each, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    header[CHECKSUM_KEY] = tensors_sha256(tensors)
    data = save(tensors, metadata={METADATA_KEY: json.dumps(_canonical(header), sort_keys=True)})
    return atomic_write_bytes(path, data)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON provenance stored in an artefact file, without loading its tensors.

    Raises :class:`CorruptArtifactError` when the file is not a readable letkd artefact.
    """
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"no artefact file at {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(METADATA_KEY)
    except SafetensorError as exc:
        raise CorruptArtifactError(f"{path} is not a readable safetensors file ({exc})") from None
    if raw is None:
        raise CorruptArtifactError(
            f"{path} is not a letkd supervision artefact (no '{METADATA_KEY}' metadata)"
        )
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise CorruptArtifactError(f"{path} has unreadable metadata (invalid JSON: {exc})") from None
    if not isinstance(meta, dict):
        raise CorruptArtifactError(f"{path} has unreadable metadata (a JSON {type(meta).__name__})")
    return meta


def check_expected(meta: dict[str, Any], expect: dict[str, Any], source: str = "artefact") -> None:
    """Raise :class:`ArtifactMismatchError` naming each field of ``expect`` that ``meta`` stores otherwise."""
    missing = object()
    diffs = []
    for key, want in sorted(expect.items()):
        have = meta.get(key, missing)
        if have is missing:
            diffs.append(f"{key}: not stored, expected {_canonical(want)!r}")
        elif _canonical(have) != _canonical(want):
            diffs.append(f"{key}: stored {have!r}, expected {_canonical(want)!r}")
    if diffs:
        raise ArtifactMismatchError(
            f"{source} does not match what was asked for ({'; '.join(diffs)}); "
            "move it out of the cache to fit it again"
        )


def load_artifact(path: str | os.PathLike, expect: dict[str, Any] | None = None) -> tuple[nn.Module, dict]:
    """Load an artefact as its module (on CPU) and its metadata.

    Raises :class:`ArtifactMismatchError` if ``expect`` differs from the stored metadata and
    :class:`CorruptArtifactError` if the file is unreadable, truncated, fails its data checksum or does
    not hold the tensors of its kind. A file without a checksum (written by an older letkd) loads unchecked.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if expect:
        check_expected(meta, expect, source=str(path))
    kind = meta.get("kind")
    if kind not in _BUILDERS:
        raise CorruptArtifactError(f"{path} has an unknown artefact kind {kind!r}")
    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise CorruptArtifactError(f"{path} is not a readable safetensors file ({exc})") from None
    stored = meta.get(CHECKSUM_KEY)
    if stored is not None and tensors_sha256(tensors) != stored:
        raise CorruptArtifactError(
            f"{path} fails its data checksum ({CHECKSUM_KEY}): the tensor bytes were modified or damaged"
        )
    try:
        module = _BUILDERS[kind](tensors, meta)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CorruptArtifactError(f"{path} does not hold the tensors of a {kind} ({exc!r})") from None
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

    def lock(self, kind: str, path: Path) -> EntryLock:
        """The exclusive lock of the entry ``path`` (the file ``<entry>.lock`` beside it)."""
        return EntryLock(path.with_suffix(".lock"), f"{kind} artefact {path.name}")

    def _load(self, kind: str, key_fields: dict[str, Any], path: Path) -> CachedArtifact | None:
        """The artefact at ``path``, or None if there is none; :class:`CorruptArtifactError` if damaged."""
        try:
            module, meta = load_artifact(path, expect={"kind": kind, **key_fields})
        except FileNotFoundError:
            return None
        return CachedArtifact(module, meta, path, cached=True)

    def _load_repairing(self, kind: str, key_fields: dict[str, Any], path: Path) -> CachedArtifact | None:
        """:meth:`_load`, moving a damaged file aside (with a warning) and returning None; hold the lock."""
        try:
            return self._load(kind, key_fields, path)
        except CorruptArtifactError as exc:
            moved = move_aside(path)
            warn(f"damaged cached artefact: {exc}; moved it to {moved}, fitting it again")
            return None

    def lookup(self, kind: str, key_fields: dict[str, Any]) -> CachedArtifact | None:
        """The cached artefact if it loads cleanly, else None; takes no lock and repairs nothing (a damaged
        file is left for :meth:`get` / :meth:`get_or_fit`, which move it aside under the lock)."""
        try:
            return self._load(kind, key_fields, self.path_for(kind, key_fields))
        except CorruptArtifactError:
            return None

    def get(self, kind: str, key_fields: dict[str, Any]) -> CachedArtifact | None:
        """The cached artefact, or None when it has not been fitted yet (or was damaged and moved aside)."""
        found = self.lookup(kind, key_fields)
        if found is not None:
            return found
        path = self.path_for(kind, key_fields)
        with self.lock(kind, path):
            return self._load_repairing(kind, key_fields, path)

    def get_locked(self, kind: str, key_fields: dict[str, Any], lock: EntryLock) -> CachedArtifact | None:
        """Holding the entry's ``lock``: the artefact if cached (a damaged file is moved aside: None), and
        leftover temporary files of an interrupted fit of the entry removed."""
        path = self.path_for(kind, key_fields)
        found = self._load_repairing(kind, key_fields, path)
        if found is None:
            assert lock.acquired_at is not None
            report_stale(remove_stale_temps(self.root, f".{path.name}.*.tmp", lock.acquired_at))
        return found

    def fit_locked(
        self, kind: str, key_fields: dict[str, Any], fit_fn: Callable[[], FitResult]
    ) -> CachedArtifact:
        """Holding the entry's lock: call ``fit_fn()`` (module, or (module, extra meta)) and save the result.

        The stored metadata is ``key_fields`` + the extra metadata + ``fit_info`` of the module + library
        versions + fit seconds.
        """
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

    def get_or_fit(
        self, kind: str, key_fields: dict[str, Any], fit_fn: Callable[[], FitResult]
    ) -> CachedArtifact:
        """Load the artefact if cached, else call ``fit_fn()`` and save it (:meth:`fit_locked`).

        The fit holds the entry's lock: another process fitting the same entry waits for it and then
        finds the artefact cached. Leftover temporary files of an interrupted fit of the entry are removed,
        a damaged file is moved aside and fitted again.
        """
        found = self.lookup(kind, key_fields)
        if found is not None:
            return found
        with self.lock(kind, self.path_for(kind, key_fields)) as lock:
            found = self.get_locked(kind, key_fields, lock)
            return found if found is not None else self.fit_locked(kind, key_fields, fit_fn)
