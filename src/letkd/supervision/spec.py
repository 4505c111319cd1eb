"""What supervision to fit: one spec per artefact, made by the method that needs it.

A method says which teacher-side supervision it needs with
:meth:`letkd.methods.base.Distiller.supervision_specs` (letKD and QuEST derive the specs from their
``layers`` params, where the fields and their defaults are declared). ``letkd fit`` and ``letkd run``
ask the method; the specs carry no defaults of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CodebookSpec:
    """A K-means codebook of ``num_templates`` centres of the teacher's features at ``teacher_tap``
    (2×2-pooled when ``teacher_pool``): letKD-1 / QuEST."""

    teacher_tap: str
    teacher_pool: bool
    num_templates: int
    kind: Literal["codebook"] = "codebook"


@dataclass(frozen=True)
class SubclassSpec:
    """LDA (``lda_components``) + ``subclasses_per_class`` sub-classes per class + score matrix of the
    teacher's features at ``teacher_tap``: letKD-2's intermediate layer."""

    teacher_tap: str
    teacher_pool: bool
    subclasses_per_class: int
    lda_components: int
    kind: Literal["subclass"] = "subclass"


Spec = CodebookSpec | SubclassSpec
