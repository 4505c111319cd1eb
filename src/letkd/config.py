"""Typed run configuration: YAML files validated by pydantic, plus dotted ``key=value`` overrides.

Configs are data: they name models, datasets and methods by registry name; nothing in them is
imported or evaluated. Unknown keys are errors that name the key and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from letkd.errors import LetkdError


class ConfigError(LetkdError, ValueError):
    """A config file or override is invalid; the message says where and why."""


class _Strict(BaseModel):
    # unknown keys are errors; NaN and ±inf are refused wherever a float is expected
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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
    num_classes: int | None = Field(None, ge=1, description="None = the dataset's number of classes")
    checkpoint: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)


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


class MethodConfig(_Strict):
    """The distillation method by registry name; ``params`` are validated by the method itself."""

    name: str = "vanilla"
    params: dict[str, Any] = Field(default_factory=dict)


class SupervisionConfig(_Strict):
    """How teacher-side supervision (codebooks, sub-classes) is fitted offline."""

    cache_dir: str = "artifacts"
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
    seed: int = 0


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
    """Optimisation and runtime settings (defaults: the paper's CIFAR-100 recipe, SPEC §4.4)."""

    epochs: int = Field(240, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
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
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    teacher: TeacherConfig | None = None
    method: MethodConfig = Field(default_factory=MethodConfig)
    supervision: SupervisionConfig = Field(default_factory=SupervisionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        # the name becomes a folder under runs/: nothing that leaves it
        if v is not None and (not v.strip() or "/" in v or "\\" in v or v in (".", "..") or "\0" in v):
            raise ValueError("must be a plain folder name (no '/', '\\', '..' or empty name)")
        return v

    def to_yaml(self) -> str:
        """The resolved config as YAML (what a run folder stores)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into the key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied (missing sections are created)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = node[part]
        node[path[-1]] = value
    return out


def format_validation_error(exc: ValidationError, heading: str, prefix: str = "") -> str:
    """A pydantic error as ``heading:`` and one line per problem, keys shown as ``<prefix><dotted key>``."""
    lines = [f"{heading}:"]
    for err in exc.errors():
        loc = prefix + ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{loc}'")
        else:
            lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a plain dict as a :class:`RunConfig`; errors name the offending keys and ``source``."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"invalid config {source}")) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (``yaml.safe_load``), apply overrides, validate.

    ``name`` defaults to the file stem (prefixed by its folder name).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc})") from None
    if data is None:
        raise ConfigError(f"{path}: the config is empty (a run needs at least data, model and method)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    cfg = config_from_dict(data, str(path))
    if cfg.name is None:
        cfg.name = path.stem if path.parent.name in ("", ".") else f"{path.parent.name}-{path.stem}"
    for section in (cfg.teacher,):
        if section is not None and section.train_config and not Path(section.train_config).is_absolute():
            section.train_config = str(_resolve_relative(path, section.train_config))
    return cfg


def _resolve_relative(config_path: Path, other: str) -> Path:
    """Paths inside a config are relative to the working directory if they exist there, else to the file."""
    p = Path(other)
    return p if p.exists() else (config_path.parent / p)
