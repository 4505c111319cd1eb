"""The model zoo: RepDistiller state_dict compatibility, reference logits, tap points, registry."""

from __future__ import annotations

import functools
import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from letkd.models import (
    TapInferenceError,
    UnknownModelError,
    create_model,
    feature_stages,
    get_taps,
    list_models,
)
from letkd.taps import UnknownTapError, feature_shape, resolve_tap

ZOO_22 = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
    "resnet32x4", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13",
    "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2",
]  # fmt: skip
WITH_LOGITS = [
    "resnet8", "resnet20", "resnet56", "resnet8x4", "wrn_16_1", "wrn_40_1", "vgg8", "MobileNetV2",
    "ShuffleV1", "ShuffleV2",
]  # fmt: skip
BIG = {"ResNet50", "vgg16", "vgg19", "resnet110", "resnet32x4", "mobilenet_v1_imagenet"}


@pytest.fixture(scope="module")
def reference_keys(fixtures_dir) -> dict[str, list]:
    return json.loads((fixtures_dir / "models" / "state_dict_keys.json").read_text())


@functools.cache
def shared_model(name: str) -> nn.Module:
    """One instance per zoo name for tests that only read a model (building the big ones takes time)."""
    return create_model(name, num_classes=100)


def _input_size(name: str) -> tuple[int, int, int]:
    return (3, 224, 224) if name == "mobilenet_v1_imagenet" else (3, 32, 32)


# ------------------------------------------------------------------------------------------ state_dicts


def test_fixture_lists_the_22_architectures(reference_keys):
    assert sorted(reference_keys) == sorted(ZOO_22)
    assert set(ZOO_22) <= set(list_models())


@pytest.mark.parametrize("name", ZOO_22)
def test_state_dict_keys_and_shapes_match_repdistiller(name, reference_keys):
    model = shared_model(name)
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == reference_keys[name]


@pytest.mark.parametrize("name", WITH_LOGITS)
def test_reference_logits_reproduced_in_eval_mode(name, fixtures_dir):
    with np.load(fixtures_dir / "models" / f"{name}.npz") as z:
        state = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
        x, expected = torch.from_numpy(z["input"]), torch.from_numpy(z["logits"])
    model = create_model(name).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == expected.shape == (2, 100)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


# Published sizes of the RepDistiller/CRD zoo (CIFAR-100 heads), in millions of parameters.
PUBLISHED_PARAMS_M = {
    "resnet20": 0.28, "resnet56": 0.86, "resnet110": 1.74, "resnet8x4": 1.23, "resnet32x4": 7.43,
    "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26, "ResNet50": 23.71, "vgg8": 3.96, "vgg13": 9.46,
    "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_parameter_counts(name, reference_keys):
    model = shared_model(name)
    n_params = sum(p.numel() for p in model.parameters())
    buffers = {k for k, _ in model.named_buffers()}
    from_fixture = sum(int(np.prod(shape)) for key, shape in reference_keys[name] if key not in buffers)
    assert n_params == from_fixture
    assert n_params / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[name], abs=0.01)


# ------------------------------------------------------------------------------------------------ taps

# (name, penultimate (C, H, W), intermediate (C, H, W), intermediate is post-ReLU) from the paper's tap
# tables; every penultimate tap is post-ReLU.
PAPER_TAPS = [
    ("resnet20", (64, 8, 8), (64, 8, 8), True),
    ("resnet32", (64, 8, 8), (64, 8, 8), True),
    ("resnet56", (64, 8, 8), (64, 8, 8), True),
    ("resnet110", (64, 8, 8), (64, 8, 8), True),
    ("resnet8x4", (256, 8, 8), (256, 8, 8), True),
    ("resnet32x4", (256, 8, 8), (256, 8, 8), True),
    ("wrn_16_2", (128, 8, 8), (128, 8, 8), False),
    ("wrn_40_1", (64, 8, 8), (64, 8, 8), False),
    ("wrn_40_2", (128, 8, 8), (128, 8, 8), False),
    ("ResNet50", (2048, 4, 4), (2048, 4, 4), True),
    ("ShuffleV1", (960, 4, 4), (960, 4, 4), True),
    ("ShuffleV2", (1024, 4, 4), (464, 4, 4), True),
    ("MobileNetV2", (1280, 2, 2), (80, 2, 2), False),
    ("vgg8", (512, 4, 4), (512, 4, 4), True),
    ("mobilenet_v1_imagenet", (1024, 7, 7), (1024, 7, 7), True),
]


@pytest.mark.parametrize("name,penultimate,intermediate,inter_post_relu", PAPER_TAPS)
def test_tap_shapes_and_activations_match_paper_tables(name, penultimate, intermediate, inter_post_relu):
    model = shared_model(name).eval()
    taps = get_taps(model)
    pen, inter = taps["penultimate"], taps["intermediate"]
    calls = {path: 0 for path in taps.values()}

    def count(path: str):
        def hook(*_args) -> None:
            calls[path] += 1

        return hook

    handles = [model.get_submodule(p).register_forward_hook(count(p)) for p in calls]
    try:
        feats = _capture(model, [pen, inter], torch.randn(1, *_input_size(name)))
    finally:
        for h in handles:
            h.remove()
    assert all(n == 1 for n in calls.values()), calls  # each tap fires exactly once per forward
    assert tuple(feats[pen].shape[1:]) == penultimate
    assert tuple(feats[inter].shape[1:]) == intermediate
    assert feats[pen].min() >= 0 and feats[pen].max() > 0
    assert (feats[inter].min() >= 0) == inter_post_relu


@pytest.mark.parametrize(
    "name,tap,size,expected",
    [
        ("resnet56", "penultimate", (3, 32, 32), (64, 8, 8)),
        ("wrn_40_2", "intermediate", (3, 32, 32), (128, 8, 8)),
        ("ShuffleV2", "intermediate", (3, 32, 32), (464, 4, 4)),
        ("MobileNetV2", "penultimate", (3, 32, 32), (1280, 2, 2)),
        ("mobilenet_v1_imagenet", "stage1", (3, 224, 224), (128, 56, 56)),
    ],
)
def test_feature_shape(name, tap, size, expected):
    assert feature_shape(shared_model(name), tap, size) == expected


EXPECTED_PATHS = {
    "resnet20": ("layer3", "layer3.0"),
    "resnet8x4": ("layer3", "layer3.0"),
    "wrn_40_2": ("relu", "block3.layer.0"),
    "ResNet50": ("layer4", "layer4.0"),
    "ShuffleV1": ("layer3", "layer3.0"),
    "ShuffleV2": ("relu2", "layer3.0"),
    "MobileNetV2": ("conv2", "blocks.5.0"),
    "vgg13": ("relu4", "relu3"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PATHS))
def test_tap_paths(name):
    taps = get_taps(shared_model(name))
    assert (taps["penultimate"], taps["intermediate"]) == EXPECTED_PATHS[name]


@pytest.mark.parametrize("name", ZOO_22 + ["mobilenet_v1_imagenet"])
def test_every_tap_is_a_submodule_and_stages_are_ordered(name):
    model = shared_model(name)
    taps = get_taps(model)
    assert {"penultimate", "intermediate", "stage1", "stage2", "stage3"} <= set(taps)
    for path in taps.values():
        assert isinstance(model.get_submodule(path), nn.Module)
    stages = feature_stages(model)
    assert stages == model.feature_stages
    assert stages == [taps[f"stage{i}"] for i in range(1, len(stages) + 1)]
    assert len(stages) in (3, 4)


def _recorder(store: dict, key: str, which: str = "output"):
    """A forward hook (or pre-hook for ``which="input"``) that keeps a copy of the first call's tensor."""

    def hook(_module, inputs, output=None) -> None:
        store.setdefault(key, (inputs[0] if which == "input" else output).clone())

    return hook


def _capture(model: nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(p).register_forward_hook(_recorder(out, p)) for p in paths]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


# One model per family (ResNet18 for the resnetv2 family, MobileNet-V1 at 64×64, to stay fast).
HEAD_CHECK = ["resnet8", "resnet8x4", "wrn_16_1", "ResNet18", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2",
              "mobilenet_v1_imagenet"]  # fmt: skip


@pytest.mark.parametrize("name", HEAD_CHECK)
def test_penultimate_tap_is_exactly_what_the_head_pools(name):
    """Zeroing the penultimate output through a hook leaves only the classifier bias in the logits."""
    model = create_model(name).eval()
    x = (
        torch.randn(1, 3, 64, 64)
        if name == "mobilenet_v1_imagenet"
        else torch.randn(1 if name in BIG else 2, 3, 32, 32)
    )
    taps = get_taps(model)
    head = model.get_submodule(taps["classifier"])
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(taps["penultimate"]).register_forward_hook(_recorder(seen, "pen")),
        head.register_forward_pre_hook(_recorder(seen, "head_in", "input")),
    ]
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(seen["pen"].mean(dim=(2, 3)), seen["head_in"], atol=1e-5, rtol=1e-5)
    handles[0].remove()
    handles.append(model.get_submodule(taps["penultimate"]).register_forward_hook(lambda m, i, o: o * 0))
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(logits, head.bias.expand_as(logits))


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2"])
def test_stage_taps_in_training_mode(name):
    """Stage outputs: post-ReLU for ResNets, raw residual sums (RepDistiller's features) for WRNs."""
    model = create_model(name).train()
    feats = _capture(model, feature_stages(model), torch.randn(4, 3, 32, 32))
    for path in feature_stages(model):
        assert (feats[path].min() >= 0) == name.startswith("resnet"), path


@pytest.mark.parametrize("name,quirk", [("resnet8x4", True), ("resnet8", True), ("resnet20", False)])
def test_resnet8x4_intermediate_is_all_of_layer3(name, quirk):
    model = create_model(name).eval()
    feats = _capture(model, ["layer3", "layer3.0"], torch.randn(2, 3, 32, 32))
    assert torch.equal(feats["layer3"], feats["layer3.0"]) == quirk


def test_hooks_see_the_tensor_the_next_block_receives():
    """A hook on ``layer3.0`` sees exactly the input of ``layer3.1`` (no later in-place change)."""
    model = create_model("resnet20").train()
    seen: dict[str, torch.Tensor] = {}

    def keep_reference(_module, _inputs, output) -> None:
        seen["out"] = output  # not a copy: a later in-place change would show up here

    model.layer3[0].register_forward_hook(keep_reference)
    model.layer3[1].register_forward_pre_hook(_recorder(seen, "snapshot", "input"))
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(seen["out"], seen["snapshot"])


def test_feature_shape_restores_training_mode_and_accepts_paths():
    model = create_model("resnet8").train()
    assert feature_shape(model, "layer2") == (32, 16, 16)
    assert model.training
    assert feature_shape(model.eval(), "stage1") == (16, 32, 32)
    assert not model.training


def test_feature_shape_at_tiny_imagenet_resolution():
    model = create_model("resnet8", num_classes=200)
    assert feature_shape(model, "penultimate", (3, 64, 64)) == (64, 16, 16)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 200)


def test_resolve_tap_names_paths_and_errors():
    model = create_model("resnet20")
    assert resolve_tap(model, "penultimate") == "layer3"
    assert resolve_tap(model, "layer2.1") == "layer2.1"
    with pytest.raises(UnknownTapError) as err:
        resolve_tap(model, "layer9")
    message = str(err.value)
    assert "penultimate" in message and "intermediate" in message and "layer3" in message
    with pytest.raises(UnknownTapError):
        resolve_tap(model, "")


# -------------------------------------------------------------------------------- third-party models


def test_torchvision_resnet18_taps():
    model = create_model("torchvision:resnet18", num_classes=10)
    assert model.fc.out_features == 10
    taps = get_taps(model)
    assert (taps["penultimate"], taps["intermediate"]) == ("layer4", "layer4.0")
    assert [taps[f"stage{i}"] for i in range(1, 5)] == ["layer1", "layer2", "layer3", "layer4"]
    assert feature_shape(model, "intermediate", (3, 32, 32)) == (512, 1, 1)


def test_torchvision_mobilenet_v2_taps():
    model = create_model("torchvision:mobilenet_v2", num_classes=10)
    taps = get_taps(model)
    # features.14 is the first (stride-2) inverted residual of the last down-sampling stage (160 ch).
    assert (taps["penultimate"], taps["intermediate"]) == ("features", "features.14")
    assert model.features[14].conv[1][0].stride == (2, 2)
    assert feature_shape(model, "penultimate", (3, 64, 64)) == (1280, 2, 2)
    assert feature_shape(model, "intermediate", (3, 64, 64)) == (160, 2, 2)


def test_timm_resnet_taps():
    pytest.importorskip("timm")
    model = create_model("timm:resnet18", num_classes=10)
    taps = get_taps(model)
    assert (taps["penultimate"], taps["intermediate"]) == ("layer4", "layer4.0")
    assert feature_shape(model, "penultimate", (3, 32, 32)) == (512, 1, 1)


def test_timm_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install letkd\[timm\]"):
        create_model("timm:resnet18")


def test_unrecognised_model_asks_for_module_paths():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(TapInferenceError, match="module paths"):
        get_taps(model)
    assert resolve_tap(model, "1") == "1"
    with pytest.raises(UnknownTapError, match="module paths include"):
        resolve_tap(model, "penultimate")


# ------------------------------------------------------------------------------------------- registry


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownModelError) as err:
        create_model("resnet21")
    assert "resnet20" in str(err.value) and "wrn_40_2" in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    with pytest.raises(UnknownModelError, match="resnet18"):
        create_model("torchvision:resnet_nope")


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1"])
def test_num_classes_and_logits_only(name):
    out = create_model(name, num_classes=10)(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
