"""Tap tables: each architecture's named tap points (tap name -> module path).

Taps are resolved to module paths by :func:`letkd.taps.resolve_tap`; this module only declares the
tables. Zoo models carry ``model.taps`` (tap name -> module path) and ``model.feature_stages`` (stage tap
paths in order). For torchvision and timm models the taps are inferred from the architecture; for anything
else pass module paths (``model.get_submodule(path)`` must accept them).

Pre-activations (RepDistiller's and mdistiller's ``preact_feats``, read by ReviewKD and OFD): zoo models also
carry ``model.preact_stages``, the module paths whose *outputs* are the values each feature stage holds before
its final ReLU (tap names ``stage1_preact`` …), and, where one BatchNorm feeds that point,
``model.preact_batchnorms`` (OFD's margins). Architectures without such points declare none and
:func:`preact_stages` / :func:`preact_batchnorms` refuse them with :class:`TapInferenceError`.
"""

from __future__ import annotations

from torch import nn


class TapInferenceError(ValueError):
    """Raised when no tap points can be inferred for a model; give module paths instead."""


def get_taps(model: nn.Module) -> dict[str, str]:
    """Tap name -> module path: ``model.taps`` for zoo models, inferred for torchvision and timm models.

    Always contains ``"penultimate"`` (output of the last convolutional stage, what the classifier head
    pools) and ``"intermediate"`` (output of the first block of the last down-sampling stage).
    Raises :class:`TapInferenceError` when the architecture is not recognised.
    """
    taps = getattr(model, "taps", None)
    if isinstance(taps, dict):
        return dict(taps)
    if _is_token_model(model):
        return token_model_taps(model)
    if _has_sequential(model, "layer4"):
        return _resnet_like_taps(model)
    if hasattr(model, "feature_info") and hasattr(model, "default_cfg"):
        return _timm_taps(model)
    if isinstance(getattr(model, "features", None), nn.Sequential):
        return _features_taps(model, "features")
    raise TapInferenceError(
        f"cannot infer tap points for {type(model).__name__}; pass module paths instead "
        f"(e.g. one of {', '.join(sample_paths(model))})"
    )


def feature_stages(model: nn.Module) -> list[str]:
    """Module paths of the model's feature stages in forward order (e.g. FitNet/AT hint points)."""
    stages = getattr(model, "feature_stages", None)
    if stages is not None:
        return list(stages)
    taps = get_taps(model)
    return [taps[k] for k in sorted((k for k in taps if k.startswith("stage")), key=lambda k: int(k[5:]))]


def preact_taps(paths: list[str]) -> dict[str, str]:
    """Tap names of pre-activation stage paths: ``{"stage1_preact": paths[0], ...}``."""
    return {f"stage{i}_preact": path for i, path in enumerate(paths, start=1)}


def preact_stages(model: nn.Module) -> list[str]:
    """Module paths whose outputs are the pre-ReLU values of the feature stages, in forward order
    (``model.preact_stages``); :class:`TapInferenceError` when the model declares none."""
    stages = getattr(model, "preact_stages", None)
    if not stages:
        raise TapInferenceError(
            f"{type(model).__name__} declares no pre-activation (pre-ReLU) stage points "
            "(model.preact_stages); pass module paths whose outputs are the pre-ReLU maps instead"
        )
    return list(stages)


def preact_batchnorms(model: nn.Module) -> list[str]:
    """Paths of the BatchNorm layers feeding each pre-activation point (``model.preact_batchnorms``, one per
    :func:`preact_stages` entry); :class:`TapInferenceError` where no single BatchNorm feeds them (e.g. a
    concatenation with an un-normalised branch, as in ShuffleNetV2)."""
    norms = getattr(model, "preact_batchnorms", None)
    if not norms:
        raise TapInferenceError(
            f"{type(model).__name__} has no single BatchNorm before the final ReLU of its stages "
            "(model.preact_batchnorms), so no margins can be derived from it; pass BatchNorm paths instead"
        )
    return list(norms)


# ---------------------------------------------------------------------------------------------------------
# inference for third-party models


def _has_sequential(model: nn.Module, name: str) -> bool:
    return isinstance(getattr(model, name, None), nn.Sequential) and len(getattr(model, name)) > 0


def _is_token_model(model: nn.Module) -> bool:
    """timm's ViT family (ViT, DeiT, …): ``patch_embed`` + ``num_prefix_tokens`` + a ``blocks`` sequence."""
    blocks = getattr(model, "blocks", None)
    return (
        hasattr(model, "patch_embed")
        and hasattr(model, "num_prefix_tokens")
        and isinstance(blocks, (nn.Sequential, nn.ModuleList))
        and len(blocks) > 0
    )


def token_model_taps(model: nn.Module) -> dict[str, str]:
    """Taps of a plain (non-hierarchical) vision transformer with ``depth`` blocks ``blocks.0…``.

    Every block keeps the same grid, so "stages" are thirds of the depth: ``stage{i}`` = the last block of
    third ``i`` (``blocks.{i·depth//3 − 1}``, three stages like the CIFAR CNNs), ``intermediate`` = the first
    block of the last third (``blocks.{2·depth//3}``), ``penultimate`` = the last block (its patch tokens
    are what an average-pooling head pools), ``stem`` = ``patch_embed``, ``classifier`` = ``head``.
    Readers see the blocks' ``(B, N, C)`` token outputs as ``(B, C, h, w)`` maps (:mod:`letkd.taps`).
    """
    depth = len(model.blocks)
    taps = {"stem": "patch_embed"}
    stages = sorted({max(i * depth // 3 - 1, 0) for i in (1, 2, 3)})
    for i, block in enumerate(stages, start=1):
        taps[f"stage{i}"] = f"blocks.{block}"
    taps["intermediate"] = f"blocks.{min(2 * depth // 3, depth - 1)}"
    taps["penultimate"] = f"blocks.{depth - 1}"
    if isinstance(getattr(model, "head", None), nn.Linear):
        taps["classifier"] = "head"
    return taps


def _resnet_like_taps(model: nn.Module) -> dict[str, str]:
    """torchvision/timm ResNets: stages ``layer1..4``, penultimate ``layer4``, intermediate ``layer4.0``."""
    taps: dict[str, str] = {}
    for stem in ("relu", "act1"):
        if isinstance(getattr(model, stem, None), nn.Module):
            taps["stem"] = stem
            break
    for i in range(1, 5):
        if _has_sequential(model, f"layer{i}"):
            taps[f"stage{i}"] = f"layer{i}"
    taps["intermediate"] = "layer4.0"
    taps["penultimate"] = "layer4"
    if isinstance(getattr(model, "fc", None), nn.Module):
        taps["classifier"] = "fc"
    return taps


def _timm_taps(model: nn.Module) -> dict[str, str]:
    """timm models: stages from ``feature_info``; penultimate = the child feeding the head (the map the
    classifier pools); intermediate = the block holding the last strided conv/pool."""
    info = [entry for entry in model.feature_info if entry.get("module")]
    if not info:
        raise TapInferenceError(f"timm model {type(model).__name__} has no feature_info; pass module paths")
    taps: dict[str, str] = {}
    stages = [e["module"] for e in info if e.get("reduction", 4) >= 4]
    stems = [e["module"] for e in info if e.get("reduction", 4) < 4]
    if stems:
        taps["stem"] = stems[-1]
    for i, path in enumerate(stages, start=1):
        taps[f"stage{i}"] = path
    taps["intermediate"] = _last_downsampling_block(model, "")
    taps["penultimate"] = _child_before_head(model) or info[-1]["module"]
    return taps


_HEAD_NAMES = ("global_pool", "avgpool", "head", "fc", "classifier")


def _child_before_head(model: nn.Module) -> str | None:
    """Name of the top-level child registered just before the pooling/classifier head (e.g. timm ``bn2``)."""
    previous = None
    for name, _child in model.named_children():
        if name in _HEAD_NAMES:
            return previous
        previous = name
    return None


def _features_taps(model: nn.Module, features: str) -> dict[str, str]:
    """Models with a ``features`` Sequential (torchvision MobileNet, EfficientNet, …)."""
    return {
        "intermediate": _last_downsampling_block(model, features),
        "penultimate": features,
    }


def _last_downsampling_block(model: nn.Module, within: str) -> str:
    """Path of the block holding the last strided conv/pool under ``within`` (registration order).

    The block is found by walking that layer's path from the root: after entering a Sequential/ModuleList
    by index, keep descending only while the child is itself a sequence of composite blocks (a stage).
    """
    root = model.get_submodule(within) if within else model
    strided = None
    for name, mod in root.named_modules():
        stride = getattr(mod, "stride", 1)
        stride = max(stride) if isinstance(stride, (tuple, list)) else stride
        if isinstance(mod, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and stride and stride > 1:
            strided = name
    if strided is None:
        raise TapInferenceError(
            f"no down-sampling layer found in {type(model).__name__}; pass module paths instead"
        )
    full = f"{within}.{strided}" if within else strided
    current: nn.Module = model
    path: list[str] = []
    for part in full.split("."):
        child = current.get_submodule(part)
        path.append(part)
        if isinstance(current, (nn.Sequential, nn.ModuleList)) and not _is_stage(child):
            break
        current = child
    return ".".join(path)


def _is_stage(module: nn.Module) -> bool:
    """A sequence whose children are themselves composite blocks (not conv/bn/act leaves)."""
    if not isinstance(module, (nn.Sequential, nn.ModuleList)) or len(module) == 0:
        return False
    return all(len(list(child.children())) > 0 for child in module)


def sample_paths(model: nn.Module, limit: int = 12) -> list[str]:
    """A few top-level and second-level module paths, for error messages."""
    paths = [name for name, _ in model.named_modules() if name and name.count(".") <= 1]
    return paths[:limit] + (["…"] if len(paths) > limit else [])
