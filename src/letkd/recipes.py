"""Training recipes: the protocol settings a paper's numbers came from, named and merged under a config.

A recipe is a partial config (optimizer, augmentation, batching, multi-stage methods). A config names one
with ``recipe: repdistiller`` or ``recipe: letkd``; :func:`merge_recipe` fills in every setting of the
recipe that the config does not set itself (the config's own values win), and the run records the recipe
in its resolved config and summary. The override ``recipe=letkd`` runs any config under another recipe.

The two recipes differ in exactly these settings (docs/methods.md, "Recipes", cites the source lines):

=========================================  ==============================  ===============================
setting                                    ``repdistiller``                ``letkd``
=========================================  ==============================  ===============================
``train.nesterov`` (SGD, momentum 0.9)     false: plain momentum           true: Nesterov momentum
``data.crop_padding`` (random crop, pad 4)  ``constant``: zeros             ``reflect``: mirrored border
``data.drop_last``                         false: last partial batch kept  true: last partial batch dropped
``train.fresh_optimizer_per_stage``        true: new SGD after AB/FSP's    false: one optimizer throughout
                                           init stage
=========================================  ==============================  ===============================

``repdistiller`` is the protocol of RepDistiller (CRD) and of the codes that copied it: the baselines of the
letKD paper's Table 1 (taken from the CRD, QuEST and TDD papers), SimKD (re-run with its official code) and
DKD (mdistiller's recipe is the same on all four settings), and the published CIFAR-100 teachers.
``letkd`` is the protocol of the letKD authors' code (built on QuEST's): letKD, QuEST and every
Tiny-ImageNet number.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """A named partial config: ``settings`` is ``{section: {key: value}}`` (``train``, ``data``)."""

    name: str
    summary: str
    settings: dict[str, dict[str, Any]]


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "repdistiller",
            "RepDistiller/CRD, SimKD and mdistiller: plain momentum SGD, zero-padded random crop, last "
            "partial batch kept, a new optimizer after an init stage",
            {
                "train": {"nesterov": False, "fresh_optimizer_per_stage": True},
                "data": {"crop_padding": "constant", "drop_last": False},
            },
        ),
        Recipe(
            "letkd",
            "the letKD authors' code (QuEST's): Nesterov SGD, reflect-padded random crop, last partial "
            "batch dropped",
            {
                "train": {"nesterov": True, "fresh_optimizer_per_stage": False},
                "data": {"crop_padding": "reflect", "drop_last": True},
            },
        ),
    )
}

#: method labels (as :func:`letkd.report.read.method_label` gives them) whose published numbers were
#: obtained under the ``letkd`` recipe; every other published number is ``repdistiller``'s
LETKD_RECIPE_LABELS = frozenset({"letkd", "letkd1", "letkd2", "quest"})


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name raises ``KeyError`` with the known names."""
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}") from None


def merge_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config as a plain dict) with its ``recipe``'s settings filled in where it sets none.

    Returns ``data`` itself when it names no recipe; otherwise a copy. Raises ``KeyError`` for an unknown
    recipe name and ``TypeError`` for a name that is not a string.
    """
    name = data.get("recipe")
    if name is None:
        return data
    if not isinstance(name, str):
        raise TypeError(f"recipe must be a name ({', '.join(sorted(RECIPES))}), got {name!r}")
    out = copy.deepcopy(data)
    for section, values in get_recipe(name).settings.items():
        if out.get(section) is None:
            out[section] = {}
        if isinstance(out[section], dict):  # anything else is reported by the config's validation
            for key, value in values.items():
                out[section].setdefault(key, value)
    return out


def published_recipe(method_label: str, dataset: str = "cifar100") -> str:
    """The recipe a published number of ``method_label`` on ``dataset`` was obtained with: ``letkd`` for
    letKD/QuEST and for every Tiny-ImageNet number (the authors ran that table), else ``repdistiller``."""
    if method_label in LETKD_RECIPE_LABELS or dataset == "tiny_imagenet":
        return "letkd"
    return "repdistiller"


__all__ = ["RECIPES", "Recipe", "get_recipe", "merge_recipe", "published_recipe"]
