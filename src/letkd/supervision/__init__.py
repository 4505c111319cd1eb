"""Teacher-side supervision: one streaming teacher pass (all rows or seeded samples, class statistics),
K-means codebooks (letKD-1, QuEST) and sub-class codebooks (letKD-2), saved as self-describing artefacts
in a cache.

Typical use: ``build_artifact(spec, teacher, ...).module`` is a frozen module (cached or fitted) whose
``targets(features[, labels])`` gives per-location target distributions ``(B, K, H, W)``.
"""

from letkd.supervision.artifacts import build_artifact, build_artifacts, teacher_identity
from letkd.supervision.budget import NotEnoughSpaceError
from letkd.supervision.codebook import Codebook, fit_codebook
from letkd.supervision.errors import (
    CorruptArtifactError,
    CorruptRowsError,
    NonFiniteFeaturesError,
    NotEnoughRowsError,
)
from letkd.supervision.extract import RowFile, extract_rows
from letkd.supervision.kmeans import train_kmeans, train_kmeans_torch
from letkd.supervision.lda import fit_lda, lda_transform
from letkd.supervision.spec import CodebookSpec, Spec, SubclassSpec
from letkd.supervision.store import (
    ArtifactCache,
    ArtifactMismatchError,
    CachedArtifact,
    cache_key,
    load_artifact,
    save_artifact,
)
from letkd.supervision.stream import collect_rows
from letkd.supervision.subclass import SubclassCodebook, fit_subclasses

__all__ = [
    "ArtifactCache",
    "ArtifactMismatchError",
    "CachedArtifact",
    "Codebook",
    "CodebookSpec",
    "CorruptArtifactError",
    "CorruptRowsError",
    "NonFiniteFeaturesError",
    "NotEnoughRowsError",
    "NotEnoughSpaceError",
    "RowFile",
    "Spec",
    "SubclassCodebook",
    "SubclassSpec",
    "build_artifact",
    "build_artifacts",
    "cache_key",
    "collect_rows",
    "extract_rows",
    "fit_codebook",
    "fit_lda",
    "fit_subclasses",
    "lda_transform",
    "load_artifact",
    "save_artifact",
    "teacher_identity",
    "train_kmeans",
    "train_kmeans_torch",
]
