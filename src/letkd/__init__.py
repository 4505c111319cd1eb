"""letkd — knowledge distillation with learnable KD layers (letKD) and the usual baselines.

The public API is re-exported here; everything else may change between releases. Names are imported
lazily, so ``import letkd`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # the method's building blocks
    "CosineConv2d": "letkd.layers",
    "KDLayer": "letkd.layers",
    "TemplateHead": "letkd.layers",
    "template_kl": "letkd.template_loss",
    "graft": "letkd.graft",
    "ungraft": "letkd.graft",
    "graft_scores": "letkd.graft",
    "bake": "letkd.deploy",
    "FeatureTaps": "letkd.taps",
    # models and data
    "create_model": "letkd.models",
    "list_models": "letkd.models",
    "register_model": "letkd.models",
    "get_taps": "letkd.models",
    "resolve_tap": "letkd.taps",
    "feature_shape": "letkd.taps",
    "load_weights": "letkd.models",
    "CheckpointError": "letkd.models",
    "create_dataset": "letkd.data",
    "dataset_info": "letkd.data",
    "register_dataset": "letkd.data",
    # teacher supervision
    "Codebook": "letkd.supervision",
    "SubclassCodebook": "letkd.supervision",
    "fit_codebook": "letkd.supervision",
    "fit_subclasses": "letkd.supervision",
    # methods, configs, training
    "Distiller": "letkd.methods",
    "MethodContext": "letkd.methods.base",
    "register_method": "letkd.methods",
    "get_method": "letkd.methods",
    "list_methods": "letkd.methods",
    "RunConfig": "letkd.config",
    "load_config": "letkd.config",
    "Trainer": "letkd.engine",
    "train_from_config": "letkd.pipeline",
    "run_pipeline": "letkd.pipeline",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'letkd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
