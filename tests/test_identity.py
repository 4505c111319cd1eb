"""Whether a run folder holds the run asked for: the keys that differ, runtime settings ignored, more epochs
allowed only where the epochs trained had the same learning rates."""

from __future__ import annotations

from letkd.config import config_from_dict
from letkd.engine.identity import config_differences, flat_settings


def test_resume_identity_allows_more_epochs_only_under_the_same_learning_rates():
    def train(**kw):
        return config_from_dict({"train": kw}).model_dump(mode="json")

    cosine = {"schedule": {"type": "cosine"}}
    assert config_differences(train(epochs=1, **cosine), train(epochs=3, **cosine), epochs_done=1) == []
    assert config_differences(train(epochs=2, **cosine), train(epochs=3, **cosine), epochs_done=2) == [
        "train.epochs: 2 -> 3"
    ]  # epoch 1 had another learning rate
    step = {"schedule": {"type": "step", "milestones": [10]}}
    assert config_differences(train(epochs=5, **step), train(epochs=8, **step), epochs_done=5) == []
    assert config_differences(train(epochs=5, **step), train(epochs=4, **step), epochs_done=5) != []
    both = config_differences(train(epochs=1, lr=0.1), train(epochs=2, lr=0.2), epochs_done=1)
    assert both == ["train.epochs: 1 -> 2", "train.lr: 0.1 -> 0.2"]
    runtime = config_differences(train(progress=True, device="cpu"), train(progress=False, device="cuda"))
    assert runtime == []  # where and how visibly a run executes may differ


def test_flat_settings_number_list_items():
    flat = flat_settings({"a": {"b": [{"c": 1}, 2], "d": {}, "e": []}})
    assert flat == {"a.b.0.c": 1, "a.b.1": 2, "a.d": {}, "a.e": []}
