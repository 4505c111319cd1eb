"""Typed run configuration: YAML files validated by pydantic, plus dotted ``key=value`` overrides.

Configs are data: they name models, datasets and methods by registry name; nothing in them is evaluated,
and ``imports`` names modules (of one's own methods, models, datasets) that are imported before anything is
built (:mod:`letkd.plugins`). Unknown keys are errors that name the key and the file.

File paths a config names (:data:`letkd.config_files.PATH_KEYS`) are relative to the folder of the file
that names them, and paths given as ``key=value`` overrides are relative to the working directory;
:func:`load_config` makes them absolute, so a loaded config (and the ``config.yaml`` a run folder keeps)
means the same from any folder.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from letkd.config_files import absolute_paths, check_expanded_size, read_yaml_file, unknown_key_hint
from letkd.config_overrides import apply_overrides
from letkd.errors import ConfigError

#: the largest run seed: every consumer (torch, numpy's legacy seeding, samplers) takes 32 bits
MAX_SEED = 2**32 - 1
#: the largest supervision seed: faiss K-means takes a C int, and sub-class fits add the class index
MAX_SUPERVISION_SEED = 2**30
#: a run name becomes folder and log-file names (255 bytes at most on common file systems)
MAX_NAME_BYTES = 120
#: more classes than any dataset has (ImageNet-21k: 21,841); a larger count is a typo
MAX_CLASSES = 1_000_000


class _Strict(BaseModel):
    # unknown keys are errors; NaN and ±inf are refused wherever a float is expected
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # YAML's true/false would otherwise count as 1/0 where a number is expected
        if isinstance(v, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if _takes_number(annotation) and not _takes(annotation, bool):
                raise ValueError(f"expected a number, got {str(v).lower()}")
        return v


def _takes(annotation: Any, kind: type) -> bool:
    return annotation is kind or kind in get_args(annotation)


def _takes_number(annotation: Any) -> bool:
    return _takes(annotation, int) or _takes(annotation, float)


def _path_value(v: Any) -> Any:
    """A path or name field: YAML reads ``crd:`` (a colon at the end) as a mapping, say so."""
    if isinstance(v, dict):
        raise ValueError(
            f"got a mapping ({v!r}), not a path or name: YAML reads a value ending in ':' as a mapping; "
            "give the whole name (e.g. crd:resnet56) or quote it"
        )
    return v


class DataConfig(_Strict):
    """Dataset and loader settings."""

    name: str = "digits"
    root: str | None = None
    batch_size: int = Field(64, ge=1)
    test_batch_size: int = Field(100, ge=1)
    num_workers: int | None = Field(None, ge=0, description="None = choose from the CPU count")
    train_subset: int | None = Field(
        None, ge=1, description="use a seeded random subset of N training images"
    )
    test_subset: int | None = Field(None, ge=1, description="use the first N test images")
    augment: bool = True
    crop_padding: Literal["constant", "reflect"] | None = Field(
        None,
        description="border of the random crop's padding: constant (zeros) or reflect; None = the dataset's "
        "own (reflect for CIFAR, zeros otherwise); no effect on datasets without a padded crop",
    )
    drop_last: bool = True
    on_device: bool = Field(
        False,
        description="hold the dataset as one uint8 tensor on the training device and crop/flip/normalise "
        "batches there (in-memory 32x32 datasets: cifar10, cifar100, fashion_mnist, digits); docs/data.md",
    )
    download: bool = Field(
        False, description="fetch CIFAR-10/100 or Tiny-ImageNet when missing (docs/data.md); ImageNet never"
    )


class ModelConfig(_Strict):
    """A network from the zoo (``resnet20``, ``torchvision:resnet18``, ``timm:...``)."""

    name: str = "resnet8"
    num_classes: int | None = Field(
        None, ge=1, le=MAX_CLASSES, description="None = the dataset's number of classes"
    )
    checkpoint: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _checkpoint_is_a_name(cls, v: Any) -> Any:
        return _path_value(v)


class TeacherConfig(ModelConfig):
    """The teacher: a checkpoint to load, or (``train_config``) a config to train it with first."""

    name: str = "resnet56"
    train_config: str | None = Field(None, description="path of a config that trains this teacher")
    check_accuracy: bool = True
    compile: bool = Field(
        False,
        description="torch.compile the frozen teacher (BN folded, weights pre-packed); docs/training.md",
    )
    channels_last: bool = Field(
        True, description="run the frozen teacher in channels-last memory format (faster convolutions)"
    )
    fold_batchnorm: bool = Field(
        True, description="fold the frozen teacher's BatchNorm layers into its convolutions (untapped ones)"
    )

    @field_validator("train_config", mode="before")
    @classmethod
    def _train_config_is_a_path(cls, v: Any) -> Any:
        return _path_value(v)


class MethodConfig(_Strict):
    """The distillation method by registry name; ``params`` are validated by the method itself."""

    name: str = "vanilla"
    params: dict[str, Any] = Field(default_factory=dict)


class SupervisionConfig(_Strict):
    """How teacher-side supervision (codebooks, sub-classes) is fitted offline."""

    cache_dir: str = Field(
        "artifacts", min_length=1, description="folder of the supervision cache ('.' = the current one)"
    )
    kmeans_iters: int = Field(20, ge=1)
    max_rows: int | None = Field(
        None,
        ge=1,
        description="codebook: the seeded sample of rows kept from the teacher pass and trained on; None = "
        "every row is kept and K-means trains on a seeded K·256 of them (speed); >= N = all rows (the "
        "paper's setting)",
    )
    rows_per_class: int | None = Field(
        None,
        ge=1,
        description="sub-classes: the seeded sample of rows per class kept for the per-class K-means and the "
        "score matrix (LDA still sees every row); None = every row",
    )
    sample_dtype: Literal["float16", "float32"] = Field(
        "float16", description="storage of sampled rows (max_rows / rows_per_class below the row count)"
    )
    extract_batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SUPERVISION_SEED, description="K-means seeds (faiss takes 31 bits)")


class ScheduleConfig(_Strict):
    """Learning-rate schedule, set per epoch or per step (``step``: multiply by gamma at each milestone)."""

    type: Literal["step", "cosine", "constant"] = "step"
    milestones: list[int] = Field(default_factory=lambda: [150, 180, 210])
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    per_step: bool = Field(
        False,
        description="update the LR before every step from the fractional epoch (smooth cosine/warm-up for "
        "short runs); false = once per epoch, as the paper",
    )


class TrainConfig(_Strict):
    """Optimisation and runtime settings (defaults: the letKD authors' CIFAR-100 protocol, SPEC §4.4;
    a config's ``recipe`` may set ``nesterov`` and ``fresh_optimizer_per_stage``)."""

    epochs: int = Field(240, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    fresh_optimizer_per_stage: bool = Field(
        False,
        description="start a new optimizer (no momentum carried over) where a multi-stage method begins a "
        "stage: AB/FSP after their init stage, as RepDistiller does",
    )
    decay_norm_and_bias: bool = Field(
        True, description="weight decay also on biases, norm weights and scales (the paper's choice)"
    )
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"
    reuse_host_memory: bool = Field(
        True,
        description="CPU runs: glibc malloc keeps freed blocks for reuse (no page faults on every step); "
        "the process keeps its peak memory",
    )
    deterministic: bool = False
    sync_bn: bool = False
    grad_clip: float | None = Field(None, gt=0)
    eval_every: int = Field(1, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap training steps per epoch")
    progress: bool = True
    tensorboard: bool = True

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as False
        return "off" if v is False else v


class RunConfig(_Strict):
    """A whole run: data, student model, optional teacher, method, supervision and training."""

    name: str | None = None
    recipe: str | None = Field(
        None, description="training recipe merged under this config: repdistiller or letkd (letkd.recipes)"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="every random choice of the run derives from it")
    imports: list[str] = Field(
        default_factory=list,
        description="modules to import before building (your own methods, models, datasets); "
        "docs/extending.md",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    teacher: TeacherConfig | None = None
    method: MethodConfig = Field(default_factory=MethodConfig)
    supervision: SupervisionConfig = Field(default_factory=SupervisionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        # the name becomes a folder under runs/ (and part of log file names): nothing that leaves it,
        # breaks a table or a shell line, or exceeds what file systems take
        if v is None:
            return v
        if not v.strip() or "/" in v or "\\" in v or v in (".", ".."):
            raise ValueError("must be a plain folder name (no '/', '\\', '..' or empty name)")
        if any(unicodedata.category(c) == "Cc" for c in v):
            raise ValueError("must not hold control characters (a newline, a tab, NUL, ...)")
        if len(v.encode()) > MAX_NAME_BYTES:
            raise ValueError(
                f"is {len(v.encode())} bytes long; a run name becomes a folder and file names, at most "
                f"{MAX_NAME_BYTES} bytes (UTF-8)"
            )
        return v

    @field_validator("imports", mode="before")
    @classmethod
    def _one_module(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v  # imports=my_kd on the command line

    @field_validator("imports")
    @classmethod
    def _module_names(cls, v: list[str]) -> list[str]:
        from letkd.plugins import MODULE_NAME

        for name in v:
            if name.endswith(".py"):
                raise ValueError(f"{name!r} is a file name: name the module instead ({name[:-3]!r})")
            if not MODULE_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a module name (like my_kd.methods): no paths, no code")
        return v

    def to_yaml(self) -> str:
        """The resolved config as YAML (what a run folder stores)."""
        data = self.model_dump(mode="json")
        if not data["imports"]:
            del data["imports"]  # configs without plugins keep the text (and the hashes) they always had
        return yaml.safe_dump(data, sort_keys=False)


def format_validation_error(
    exc: ValidationError,
    heading: str,
    prefix: str = "",
    model: Any = None,
    overrides: list[str] | None = None,
) -> str:
    """A pydantic error as ``heading:`` and one line per problem, keys shown as ``<prefix><dotted key>``.

    With ``model`` (the validated class) an unknown key gets the close matches of its section; a key set by
    one of ``overrides`` is said to come from the command line.
    """
    given = {text.split("=", 1)[0]: text for text in overrides or []}
    lines = [f"{heading}:"]
    for err in exc.errors():
        dotted = ".".join(str(p) for p in err["loc"])
        loc = prefix + dotted
        shown = given.get(dotted, "")
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        origin = f" (from the command line: {shown})" if shown else ""
        if err["type"] == "extra_forbidden":
            hint = unknown_key_hint(model, err["loc"], prefix) if model is not None else ""
            lines.append(f"  unknown key '{loc}'{origin}{hint}")
        else:
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {loc}: {message}{origin}")
    return "\n".join(lines)


def config_from_dict(
    data: dict[str, Any], source: str = "<dict>", overrides: list[str] | None = None
) -> RunConfig:
    """Validate a plain dict as a :class:`RunConfig`; errors name the offending keys and ``source`` (and
    which of ``overrides``, the command line's ``key=value`` items, set them).

    A config naming a ``recipe`` gets the recipe's settings wherever it sets none (:mod:`letkd.recipes`). A
    dict whose shared parts would expand it far beyond its size is refused
    (:func:`letkd.config_files.check_expanded_size`).
    """
    from letkd.recipes import merge_recipe

    check_expanded_size(data, source)
    try:
        data = merge_recipe(data)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"invalid config {source}: {exc.args[0]}") from None
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        text = format_validation_error(exc, f"invalid config {source}", model=RunConfig, overrides=overrides)
        raise ConfigError(text) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (``yaml.safe_load``, bounded: :func:`letkd.config_files.read_yaml_file`), apply
    overrides, validate, import its ``imports``.

    ``name`` defaults to the file stem (prefixed by its folder name). The paths of
    :data:`~letkd.config_files.PATH_KEYS` come back absolute: those in the file resolved against the file's
    folder, those in overrides against the working directory.
    """
    path = Path(path)
    data = read_yaml_file(path)
    if data is None:
        raise ConfigError(f"{path}: the config is empty (a run needs at least data, model and method)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    data = absolute_paths(data, path)
    data = absolute_paths(apply_overrides(data, overrides or []), None)
    cfg = config_from_dict(data, str(path), overrides)
    if cfg.name is None:
        cfg.name = path.stem if path.parent.name in ("", ".") else f"{path.parent.name}-{path.stem}"
    if cfg.imports:
        from letkd.plugins import import_modules

        import_modules(cfg.imports, str(path))
    return cfg
