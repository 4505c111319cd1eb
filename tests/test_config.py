"""Config loading: unknown keys, overrides, the resolved config written to the run folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from letkd.config import ConfigError, RunConfig, apply_overrides, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "seed: 1\nbogus: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "bogus" in str(err.value) and str(path) in str(err.value)


def test_unknown_nested_key_names_dotted_key(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  lr_decay: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.lr_decay" in str(err.value) and str(path) in str(err.value)


def test_unknown_key_from_override_is_an_error(tmp_path):
    path = write(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(path, ["train.epoch=3"])


def test_overrides_are_typed_and_applied(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 240\ndata:\n  batch_size: 64\n")
    cfg = load_config(path, ["train.epochs=3", "data.batch_size=32", "train.schedule.milestones=[1,2]"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.data.batch_size == 32
    assert cfg.train.schedule.milestones == [1, 2]
    assert cfg.train.lr == 0.05  # untouched default


def test_override_with_invalid_value_is_an_error(tmp_path):
    path = write(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(path, ["train.epochs=zero"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(path, ["train.epochs"])


def test_override_creates_missing_sections():
    out = apply_overrides({}, ["train.schedule.type=cosine"])
    assert out == {"train": {"schedule": {"type": "cosine"}}}


def test_yaml_off_means_amp_off(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  amp: off\n"))
    assert cfg.train.amp == "off"


def test_name_defaults_to_folder_and_stem(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    cfg = load_config(write(folder, "seed: 0\n", "resnet8.yaml"))
    assert cfg.name == "digits-resnet8"


def test_resolved_config_round_trips_through_yaml():
    cfg = config_from_dict({"train": {"epochs": 7, "amp": "bf16"}, "data": {"name": "digits"}})
    again = RunConfig.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.train.epochs >= 1
