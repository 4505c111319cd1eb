"""Model zoo (RepDistiller CIFAR names, ``torchvision:<name>``, ``timm:<name>``), tap points, checkpoints."""

# Importing the architecture modules registers the zoo.
from letkd.checkpoints import CheckpointError, read_checkpoint
from letkd.models import (  # noqa: F401
    mobilenet_imagenet,
    mobilenetv2,
    resnet,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from letkd.models.registry import UnknownModelError, create_model, list_models, register_model
from letkd.models.taps import (
    TapInferenceError,
    UnknownTapError,
    feature_shape,
    feature_stages,
    get_taps,
    resolve_tap,
)
from letkd.models.weights import load_weights, save_weights

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
