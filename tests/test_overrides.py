"""Dotted ``key=value`` overrides that reach into list items, and their errors."""

from __future__ import annotations

import pytest

from letkd.config import ConfigError, apply_overrides, load_config

TWO_LAYERS = [{"kind": "subclass", "alpha": 0.2}, {"kind": "codebook", "alpha": 0.1}]
LAYERS = {"method": {"name": "letkd", "params": {"layers": TWO_LAYERS}}}


def test_an_index_reaches_one_list_item():
    out = apply_overrides(LAYERS, ["method.params.layers.1.alpha=0.5", "method.params.layers.0.new=16"])
    layers = out["method"]["params"]["layers"]
    assert layers == [{"kind": "subclass", "alpha": 0.2, "new": 16}, {"kind": "codebook", "alpha": 0.5}]
    assert LAYERS["method"]["params"]["layers"][1]["alpha"] == 0.1  # the input is not changed
    assert apply_overrides({"a": [1, 2, 3]}, ["a.2=9"]) == {"a": [1, 2, 9]}  # a scalar item


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.params.layers.2.alpha=1", "'layers' has 2 item(s) (items 0-1), no item 2"),
        ("method.params.layers.-1.alpha=1", "'layers' is a list; the next part must be an item number"),
        ("method.params.layers.alpha=1", "not 'alpha'"),
        ("method.name.0=1", "'name' is not a section or a list"),
        ("method.params.layers.0.alpha.x=1", "'alpha' is not a section or a list"),
    ],
)
def test_wrong_index_or_non_list_is_one_clear_error(override, message):
    with pytest.raises(ConfigError) as exc:
        apply_overrides(LAYERS, [override])
    assert message in str(exc.value) and override in str(exc.value)


def test_list_item_override_is_validated_like_the_file(tmp_path):
    path = tmp_path / "letkd2.yaml"
    path.write_text(
        "method:\n  name: letkd\n  params:\n    layers:\n"
        "      - {kind: subclass, student_tap: intermediate, teacher_tap: layer2, subclasses_per_class: 2}\n"
        "      - {kind: codebook, student_tap: penultimate, teacher_tap: penultimate}\n"
    )
    cfg = load_config(path, ["method.params.layers.0.subclasses_per_class=16"])
    assert cfg.method.params["layers"][0]["subclasses_per_class"] == 16
    assert apply_overrides({"a": []}, []) == {"a": []}
    with pytest.raises(ConfigError, match="has 0 item"):
        apply_overrides({"a": []}, ["a.0=1"])

