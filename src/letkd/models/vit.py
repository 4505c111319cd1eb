"""Small vision transformers for 32×32 inputs (timm's ``VisionTransformer``, patch 4: an 8×8 token grid).

letkd's own settings, not from a paper: patch 4 so that a 32×32 image gives the same 8×8 grid as the
last stage of the CIFAR ResNets, one class token, and a head that averages the *patch* tokens
(``global_pool="avg"``), so a KD layer grafted at the last block reaches the logits. Tap names come from
:func:`letkd.models.tap_names.token_model_taps`; readers see the blocks' tokens as ``(B, C, 8, 8)`` maps.
Needs ``pip install letkd[timm]``.

| name | width | depth | heads | MLP ratio | parameters (10 classes) |
|---|---|---|---|---|---|
| ``vit_pico_p4`` | 64 | 4 | 2 | 2 | ≈ 0.14 M |
| ``deit_tiny_p4`` | 192 | 12 | 3 | 4 | ≈ 5.4 M (DeiT-tiny's width, depth and heads) |
"""

from __future__ import annotations

from torch import nn

from letkd.models.registry import register_model

_SIZES = {
    "vit_pico_p4": {"embed_dim": 64, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0},
    "deit_tiny_p4": {"embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0},
}


def small_vit(
    size: str, num_classes: int = 100, img_size: int = 32, patch_size: int = 4, **kwargs
) -> nn.Module:
    """A timm ``VisionTransformer`` of ``size`` (see the module table); ``kwargs`` override its settings."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as exc:
        raise ImportError(f"model {size!r} needs the timm package: pip install letkd[timm]") from exc
    settings = {"class_token": True, "global_pool": "avg", **_SIZES[size], **kwargs}
    return VisionTransformer(img_size=img_size, patch_size=patch_size, num_classes=num_classes, **settings)


for _name in _SIZES:
    register_model(_name)(lambda num_classes=100, _size=_name, **kw: small_vit(_size, num_classes, **kw))
