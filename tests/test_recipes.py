"""Training recipes: merged under a config, switched by one override, applied by the data pipeline and the
trainer, recorded in the summary and kept apart by ``letkd report``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from letkd.config import ConfigError, config_from_dict, load_config
from letkd.data import create_dataset, get_transform
from letkd.data.transforms import RandomCropFlipNormalize
from letkd.methods.vanilla import Vanilla
from letkd.recipes import RECIPES, merge_recipe, published_recipe
from letkd.report import collect_runs, paper_tables, summarize, to_markdown
from test_engine import synthetic_cfg, synthetic_trainer
from test_report import LETKD2, make_run

ROOT = Path(__file__).resolve().parents[1]
RECIPE_KEYS = {(section, key) for r in RECIPES.values() for section, values in r.settings.items()
               for key in values}  # fmt: skip


def test_the_two_recipes_set_the_same_keys_to_different_protocols():
    rep, let = (RECIPES[n].settings for n in ("repdistiller", "letkd"))
    assert {(s, k) for s in rep for k in rep[s]} == {(s, k) for s in let for k in let[s]} == RECIPE_KEYS
    cfg = {name: config_from_dict({"recipe": name}) for name in RECIPES}
    assert (cfg["repdistiller"].train.nesterov, cfg["letkd"].train.nesterov) == (False, True)
    assert (cfg["repdistiller"].data.crop_padding, cfg["letkd"].data.crop_padding) == ("constant", "reflect")
    assert (cfg["repdistiller"].data.drop_last, cfg["letkd"].data.drop_last) == (False, True)
    fresh = [cfg[n].train.fresh_optimizer_per_stage for n in ("repdistiller", "letkd")]
    assert fresh == [True, False]


def test_a_config_wins_over_its_recipe_and_unknown_recipes_are_errors():
    data = {"recipe": "repdistiller", "train": {"nesterov": True}, "data": None}
    cfg = config_from_dict(data)
    assert cfg.train.nesterov is True and cfg.data.drop_last is False and cfg.recipe == "repdistiller"
    assert data == {"recipe": "repdistiller", "train": {"nesterov": True}, "data": None}  # not modified
    assert merge_recipe({"seed": 1}) == {"seed": 1}
    with pytest.raises(ConfigError, match="unknown recipe 'crd'; known recipes: letkd, repdistiller"):
        config_from_dict({"recipe": "crd"}, "x.yaml")
    with pytest.raises(ConfigError, match="recipe must be a name"):
        config_from_dict({"recipe": ["letkd"]})
    resolved = config_from_dict({"recipe": "letkd"})
    again = config_from_dict(yaml.safe_load(resolved.to_yaml()))  # a run folder's config reloads the same
    assert again == resolved


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


PAPER_CONFIGS = [
    p
    for d in ("cifar100", "tiny_imagenet", "ablations")
    for p in sorted((ROOT / "configs" / d).rglob("*.yaml"))
]


def test_every_paper_config_names_the_recipe_of_its_numbers_and_leaves_its_settings_to_it():
    for path in PAPER_CONFIGS:
        data = _raw(path)
        authors = "tiny_imagenet" in path.parts or "ablations" in path.parts  # all run in the authors' code
        expected = "letkd" if authors or path.stem in ("letkd1", "letkd2", "quest") else "repdistiller"
        assert data.get("recipe") == expected, path
        set_here = {(s, k) for s, k in RECIPE_KEYS if k in (data.get(s) or {})}
        assert not set_here, f"{path} sets {set_here}: the recipe=... override could not switch them"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_one_override_runs_a_config_under_another_recipe(recipe):
    path = ROOT / "configs" / "cifar100" / "resnet56_resnet20" / "kd.yaml"
    cfg = load_config(path, [f"recipe={recipe}"])
    assert cfg.recipe == recipe
    for section, values in RECIPES[recipe].settings.items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, key


def test_crop_padding_sets_the_random_crops_border(monkeypatch):
    mirrored = create_dataset("digits", "train", crop_padding="reflect").transform
    zeros, default = get_transform("digits", "train", "constant"), get_transform("digits", "train")
    assert get_transform("cifar100", "train").padding_mode == "reflect"  # the datasets' own borders
    assert get_transform("cifar100", "train", "constant").padding_mode == "constant"
    assert isinstance(zeros, RandomCropFlipNormalize) and zeros.padding_mode == "constant"
    assert mirrored.padding_mode == "reflect" and default.padding_mode == "constant"
    assert (mirrored.size, mirrored.padding, mirrored.flip) == (default.size, default.padding, default.flip)
    image = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    monkeypatch.setattr(torch, "rand", lambda n: torch.zeros(n))  # crop at the top-left corner, no flip
    black = zeros.normalize(torch.zeros(3, 1, 1, dtype=torch.uint8))[:, 0, 0]
    assert torch.equal(zeros(image)[:, 0, 0], black)  # the corner is padding: zeros
    assert torch.equal(mirrored(image), mirrored.normalize(image))  # a uniform image mirrors into itself


class TwoStage(Vanilla):
    """The student alone, with a second stage from epoch 1 on (as AB/FSP's main stage)."""

    def stage_starts(self):
        return [1]


@pytest.mark.parametrize("fresh", [True, False])
def test_a_new_stage_starts_with_a_fresh_optimizer_when_the_recipe_says_so(tmp_path, fresh):
    cfg = synthetic_cfg(epochs=3, momentum=0.9, fresh_optimizer_per_stage=fresh)
    trainer = synthetic_trainer(tmp_path, cfg, TwoStage)
    buffers_at_start = []
    train_epoch = trainer.train_epoch

    def spy(epoch):
        buffers_at_start.append(len(trainer.optimizer.state))
        return train_epoch(epoch)

    trainer.train_epoch = spy
    trainer.fit()
    assert buffers_at_start[0] == 0 and buffers_at_start[2] > 0
    assert (buffers_at_start[1] == 0) is fresh


def _recipe_run(base: Path, name: str, seed: int, curve: list[float], recipe: str, **kw) -> Path:
    folder = make_run(base, f"{name}-{recipe}", seed, curve, **kw)
    data = yaml.safe_load((folder / "config.yaml").read_text())
    data["recipe"], data["name"] = recipe, name  # one config, run under two recipes
    (folder / "config.yaml").write_text(config_from_dict(data).to_yaml())
    return folder


def test_report_and_the_paper_layout_never_mix_recipes(tmp_path):
    pair, kd = "cifar100-resnet56_resnet20", {"method": "kd", "params": {}}
    for seed, (a, b) in enumerate([(70.0, 71.0), (70.5, 72.0)]):
        _recipe_run(tmp_path, f"{pair}-kd", seed, [60.0, a], "repdistiller", **kd)
        _recipe_run(tmp_path, f"{pair}-kd", seed, [60.0, b], "letkd", **kd)
        _recipe_run(tmp_path, f"{pair}-letkd2", seed, [60.0, 73.0 + seed], "letkd", params=LETKD2)
    records = collect_runs([tmp_path])
    assert {r.recipe for r in records} == {"repdistiller", "letkd"}
    groups = summarize(records)
    shown = {g.display: (g.n, g.best_mean) for g in groups}
    assert shown == {"kd [repdistiller]": (2, 70.25), "kd [letkd]": (2, 71.5), "letkd2 [letkd]": (2, 73.5)}
    assert "| kd [letkd] |" in to_markdown(groups)
    table = paper_tables(records)[0]
    published = table.cell("KD", "RN56→RN20")
    assert (published.n, published.mean, published.paper) == (2, 70.25, 70.66)
    other = table.cell("KD [letkd recipe]", "RN56→RN20")
    assert (other.n, other.mean, other.paper) == (2, 71.5, None)  # the paper has no such number
    assert table.cell("letKD-2", "RN56→RN20").paper == 73.27
    assert published_recipe("kd") == "repdistiller" and published_recipe("letkd2") == "letkd"
    assert published_recipe("kd", "tiny_imagenet") == "letkd"
