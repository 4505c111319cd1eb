"""Model registry: the CIFAR zoo by RepDistiller name, plus ``torchvision:<name>`` and ``timm:<name>``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ModelFactory = Callable[..., nn.Module]

_ZOO: dict[str, ModelFactory] = {}

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"


class UnknownModelError(KeyError, ValueError):
    """Raised for a model name that is neither in the zoo nor a valid ``torchvision:``/``timm:`` name."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``factory(num_classes=..., **kwargs) -> nn.Module`` available as ``name``."""

    def deco(factory: ModelFactory) -> ModelFactory:
        if name in _ZOO and _ZOO[name] is not factory:
            raise ValueError(f"model {name!r} is already registered")
        _ZOO[name] = factory
        return factory

    return deco


def list_models() -> list[str]:
    """Names of the built-in zoo models (``torchvision:<name>`` and ``timm:<name>`` are accepted as well)."""
    return sorted(_ZOO, key=str.lower)


def create_model(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    """Build a model by registry name with random weights; ``forward(x)`` returns logits ``(B, num_classes)``.

    ``name`` is a zoo name (see :func:`list_models`), ``torchvision:<name>`` (any torchvision classification
    model, ``weights=None`` unless given in ``kwargs``) or ``timm:<name>`` (``pretrained=False`` unless given;
    needs ``pip install letkd[timm]``). Extra ``kwargs`` go to the model's constructor.
    """
    if name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(name[len(TORCHVISION_PREFIX) :], num_classes, **kwargs)
    if name.startswith(TIMM_PREFIX):
        return _create_timm(name[len(TIMM_PREFIX) :], num_classes, **kwargs)
    try:
        factory = _ZOO[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}, "
            f"or '{TORCHVISION_PREFIX}<name>' / '{TIMM_PREFIX}<name>'"
        ) from None
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
