"""What supervision a run needs, read from its method parameters.

A method that uses teacher-side supervision lists its KD layers in ``cfg.method.params["layers"]``; each
entry is a dict with ``kind: codebook | subclass`` (default codebook), ``teacher_tap`` (tap name or module
path), ``teacher_pool`` (2×2 average pool of the teacher map) and the fit sizes. Keys the method itself uses
(``student_tap``, ``alpha``, ``temperature``, ``weight``, …) are ignored here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from letkd.config import ConfigError, RunConfig


class CodebookSpec(BaseModel):
    """A K-means codebook of the teacher's features at ``teacher_tap`` (letKD-1 / QuEST)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["codebook"] = "codebook"
    teacher_tap: str
    teacher_pool: bool = False
    num_templates: int = Field(4096, ge=1, description="K, the number of K-means centres")


class SubclassSpec(BaseModel):
    """LDA + per-class sub-classes + score matrix at ``teacher_tap`` (letKD-2's intermediate layer)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["subclass"] = "subclass"
    teacher_tap: str
    teacher_pool: bool = False
    subclasses_per_class: int = Field(8, ge=1)
    lda_components: int = Field(60, ge=1)


Spec = Annotated[CodebookSpec | SubclassSpec, Field(discriminator="kind")]
_SPEC_LIST = TypeAdapter(list[Spec])


def specs_from_layers(
    layers: list[dict[str, Any]] | None, source: str = "method.params.layers"
) -> list[Spec]:
    """Validate a ``layers`` list into specs; errors name the entry and key."""
    if not layers:
        return []
    entries = [{"kind": "codebook", **entry} if isinstance(entry, dict) else entry for entry in layers]
    try:
        return _SPEC_LIST.validate_python(entries)
    except ValidationError as exc:
        lines = [f"invalid supervision entry in {source}:"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  layers.{loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def specs_from_config(cfg: RunConfig) -> list[Spec]:
    """The supervision specs of a run (empty when its method needs none)."""
    layers = cfg.method.params.get("layers")
    if layers is not None and not isinstance(layers, list):
        raise ConfigError(f"method.params.layers must be a list, got {type(layers).__name__}")
    return specs_from_layers(layers)
