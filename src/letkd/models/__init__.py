"""Model zoo (RepDistiller CIFAR names, small ViTs, ``torchvision:``/``timm:<name>``), taps, checkpoints.

Tap names resolve to module paths with :func:`letkd.taps.resolve_tap`."""

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
    vit,
    wrn,
)
from letkd.models.registry import UnknownModelError, create_model, list_models, register_model
from letkd.models.tap_names import TapInferenceError, feature_stages, get_taps
from letkd.models.weights import load_weights, save_weights

__all__ = [
    "CheckpointError",
    "TapInferenceError",
    "UnknownModelError",
    "create_model",
    "feature_stages",
    "get_taps",
    "list_models",
    "load_weights",
    "read_checkpoint",
    "register_model",
    "save_weights",
]
