"""Model zoo (RepDistiller CIFAR names, ``torchvision:<name>``, ``timm:<name>``), tap points, checkpoints."""

from letkd.models import resnet  # noqa: F401  (registers the zoo)
from letkd.models.checkpoint import CheckpointError, load_weights, read_checkpoint, save_weights
from letkd.models.registry import UnknownModelError, create_model, list_models, register_model
from letkd.models.taps import (
    TapInferenceError,
    UnknownTapError,
    feature_shape,
    feature_stages,
    get_taps,
    resolve_tap,
)

__all__ = [
    "CheckpointError",
    "TapInferenceError",
    "UnknownModelError",
    "UnknownTapError",
    "create_model",
    "feature_shape",
    "feature_stages",
    "get_taps",
    "list_models",
    "load_weights",
    "read_checkpoint",
    "register_model",
    "resolve_tap",
    "save_weights",
]
