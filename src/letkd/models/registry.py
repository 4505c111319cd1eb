"""Model registry: the CIFAR zoo by RepDistiller name, plus ``torchvision:<name>`` and ``timm:<name>``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from letkd.plugins import Registry, UnknownNameError

ModelFactory = Callable[..., nn.Module]

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"


class UnknownModelError(UnknownNameError):
    """Raised for a model name that is neither registered nor a valid ``torchvision:``/``timm:`` name."""


MODELS: Registry[ModelFactory] = Registry("model", "letkd.models", UnknownModelError)


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``factory(num_classes=..., **kwargs) -> nn.Module`` available as ``name``."""
    return MODELS.register(name)


def list_models() -> list[str]:
    """Names of the registered models (``torchvision:<name>`` and ``timm:<name>`` are accepted as well)."""
    return MODELS.names()


def create_model(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    """Build a model by registry name with random weights; ``forward(x)`` returns logits ``(B, num_classes)``.

    ``name`` is a registered name (the zoo, see :func:`list_models`, or a model of your own registered from
    a config's ``imports:`` or an entry point of group ``letkd.models``), ``torchvision:<name>`` (any
    torchvision classification model, ``weights=None`` unless given in ``kwargs``) or ``timm:<name>``
    (``pretrained=False`` unless given; needs ``pip install letkd[timm]``). Extra ``kwargs`` go to the
    model's constructor.
    """
    if name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(name[len(TORCHVISION_PREFIX) :], num_classes, **kwargs)
    if name.startswith(TIMM_PREFIX):
        return _create_timm(name[len(TIMM_PREFIX) :], num_classes, **kwargs)
    try:
        factory = MODELS.get(name)
    except UnknownModelError:
        also = f"; or '{TORCHVISION_PREFIX}<name>' / '{TIMM_PREFIX}<name>'"
        raise UnknownModelError(MODELS.unknown_message(name, also)) from None
    return factory(num_classes=num_classes, **kwargs)


def _create_torchvision(name: str, num_classes: int, **kwargs) -> nn.Module:
    import torchvision.models as tvm

    valid = tvm.list_models(module=tvm)
    if name not in valid:
        raise UnknownModelError(
            f"unknown torchvision classification model {name!r}; valid names: {', '.join(sorted(valid))}"
        )
    kwargs.setdefault("weights", None)
    return tvm.get_model(name, num_classes=num_classes, **kwargs)


def _create_timm(name: str, num_classes: int, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ImportError(f"model 'timm:{name}' needs the timm package: pip install letkd[timm]") from exc
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:20]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise UnknownModelError(f"unknown timm model {name!r}{hint}")
    kwargs.setdefault("pretrained", False)
    return timm.create_model(name, num_classes=num_classes, **kwargs)
