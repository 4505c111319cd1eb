"""Checkpoint files and model weights: the atomic writer, training checkpoints with RNG state, accepted
layouts, refusal of code-executing pickles, strict mismatch reports."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from letkd.checkpoints import save_checkpoint
from letkd.engine.state import capture_rng_state, load_checkpoint, restore_rng_state
from letkd.models import CheckpointError, create_model, load_weights, save_weights

EXECUTED: list[str] = []


def _record_execution(tag: str) -> str:
    EXECUTED.append(tag)
    return tag


class CodeOnUnpickle:
    """Unpickling an instance calls ``_record_execution``: the kind of file that must be refused."""

    def __reduce__(self):
        return (_record_execution, ("unpickled",))


def _random_state(model: nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }


def _assert_loaded(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert own.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def test_repdistiller_checkpoint_with_optimizer_and_tensor_accuracy(tmp_path):
    source = create_model("resnet8")
    state = _random_state(source)
    optimizer = torch.optim.SGD(source.parameters(), lr=0.05, momentum=0.9)
    source(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # momentum buffers: the optimizer state holds tensors
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(
        {
            "epoch": 240,
            "model": state,
            "accuracy": torch.tensor([72.34]),
            "optimizer": optimizer.state_dict(),
        },
        path,
    )
    model = create_model("resnet8")
    meta = load_weights(model, path)
    _assert_loaded(model, state)
    assert meta["epoch"] == 240
    assert meta["accuracy"] == pytest.approx(72.34, rel=1e-6)
    assert meta["format"] == "model"
    assert "optimizer" not in meta


def test_legacy_serialisation_format(tmp_path):
    state = _random_state(create_model("resnet8"))
    path = tmp_path / "legacy.pth"
    torch.save({"model": state, "epoch": 3}, path, _use_new_zipfile_serialization=False)
    model = create_model("resnet8")
    assert load_weights(model, path)["epoch"] == 3
    _assert_loaded(model, state)


def test_numpy_scalar_metadata_is_accepted(tmp_path):
    state = _random_state(create_model("resnet8"))
    torch.save({"model": state, "best_acc": np.float64(71.5), "epoch": np.int64(7)}, tmp_path / "np.pth")
    meta = load_weights(create_model("resnet8"), tmp_path / "np.pth")
    assert meta["best_acc"] == 71.5 and meta["epoch"] == 7
    assert type(meta["best_acc"]) is float and type(meta["epoch"]) is int


def test_reference_network_layout(tmp_path):
    state = _random_state(create_model("wrn_16_1"))
    path = tmp_path / "teacher.pth"
    torch.save({"epoch": "*", "network": state, "metric": None}, path)
    model = create_model("wrn_16_1")
    meta = load_weights(model, path)
    _assert_loaded(model, state)
    assert meta == {"format": "network", "epoch": "*", "metric": None}


def test_own_checkpoint_roundtrip(tmp_path):
    source = create_model("resnet8")
    source.load_state_dict(_random_state(source))
    path = save_weights(source, tmp_path / "run" / "best.pth", epoch=12, metrics={"top1": 55.5})
    model = create_model("resnet8")
    meta = load_weights(model, path)
    _assert_loaded(model, source.state_dict())
    assert meta["epoch"] == 12 and meta["metrics"] == {"top1": 55.5}


def test_bare_state_dict_from_data_parallel(tmp_path):
    source = create_model("resnet8")
    source.load_state_dict(_random_state(source))
    wrapped = nn.DataParallel(source)
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    path = tmp_path / "dp.pth"
    torch.save(wrapped.state_dict(), path)
    model = create_model("resnet8")
    assert load_weights(model, path) == {"format": "state_dict"}
    _assert_loaded(model, source.state_dict())


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    source = create_model("resnet8")
    state = _random_state(source)
    save_file(state, str(tmp_path / "w.safetensors"))
    model = create_model("resnet8")
    load_weights(model, tmp_path / "w.safetensors")
    _assert_loaded(model, state)


def test_teacher_checkpoint_reproduces_reference_logits(tmp_path, fixtures_dir):
    """A RepDistiller-layout file built from the fixture weights gives the fixture's logits."""
    with np.load(fixtures_dir / "models" / "resnet20.npz") as z:
        state = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
        x, expected = torch.from_numpy(z["input"]), torch.from_numpy(z["logits"])
    torch.save({"epoch": 240, "model": state, "accuracy": 69.06}, tmp_path / "ckpt_epoch_240.pth")
    model = create_model("resnet20")
    load_weights(model, tmp_path / "ckpt_epoch_240.pth")
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected, atol=1e-4, rtol=1e-4)


def test_file_that_would_execute_code_is_refused(tmp_path):
    path = tmp_path / "malicious.pth"
    with open(path, "wb") as fh:
        pickle.dump({"model": {}, "payload": CodeOnUnpickle()}, fh, protocol=2)
    torch.save({"model": create_model("resnet8").state_dict(), "extra": CodeOnUnpickle()}, tmp_path / "t.pth")
    torch.save(create_model("resnet8"), tmp_path / "whole_model.pth")  # a pickled nn.Module
    EXECUTED.clear()
    for p in (path, tmp_path / "t.pth", tmp_path / "whole_model.pth"):
        with pytest.raises(CheckpointError, match="refused: unpickling it would run code") as err:
            load_weights(create_model("resnet8"), p)
        assert "refused" in str(err.value)
    assert EXECUTED == []


def _mismatched_file(tmp_path, model: nn.Module) -> str:
    state = model.state_dict()
    state.pop("layer1.0.bn1.running_var")
    state["head.extra.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(10, 64)
    path = tmp_path / "mismatch.pth"
    torch.save({"model": state}, path)
    return str(path)


def test_strict_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    path = _mismatched_file(tmp_path, create_model("resnet8"))
    model = create_model("resnet8")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    message = str(err.value)
    assert "missing keys" in message and "layer1.0.bn1.running_var" in message
    assert "unexpected keys" in message and "head.extra.weight" in message
    assert "shape conflicts" in message and "fc.weight: checkpoint [10, 64] vs model [100, 64]" in message
    for k, v in model.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda s: s.pop("fc.bias"), "missing keys (in the model, not in the checkpoint) (1):\n    fc.bias"),
        (
            lambda s: s.__setitem__("extra", torch.zeros(1)),
            "unexpected keys (in the checkpoint, not in the model) (1)",
        ),
        (
            lambda s: s.__setitem__("conv1.weight", torch.zeros(16, 3, 1, 1)),
            "conv1.weight: checkpoint [16, 3, 1, 1]",
        ),
    ],
)
def test_each_kind_of_mismatch_alone(tmp_path, edit, expected):
    state = create_model("resnet8").state_dict()
    edit(state)
    torch.save(state, tmp_path / "x.pth")
    with pytest.raises(CheckpointError) as err:
        load_weights(create_model("resnet8"), tmp_path / "x.pth")
    assert expected in str(err.value)


def test_non_strict_loads_what_matches_and_reports(tmp_path):
    source = create_model("resnet8")
    source.load_state_dict(_random_state(source))
    path = _mismatched_file(tmp_path, source)
    model = create_model("resnet8")
    fc_before = model.fc.weight.clone()
    meta = load_weights(model, path, strict=False)
    assert meta["missing_keys"] == ["layer1.0.bn1.running_var"]
    assert meta["unexpected_keys"] == ["head.extra.weight"]
    assert meta["shape_mismatches"] == [{"key": "fc.weight", "checkpoint": [10, 64], "model": [100, 64]}]
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.fc.weight, fc_before)


def test_files_without_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="no state_dict found"):
        load_weights(create_model("resnet8"), tmp_path / "a.pth")
    torch.save([1, 2, 3], tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match="not a dict"):
        load_weights(create_model("resnet8"), tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(create_model("resnet8"), tmp_path / "missing.pth")
    (tmp_path / "c.pth").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_weights(create_model("resnet8"), tmp_path / "c.pth")


# ------------------------------------------------------------------------------- training checkpoints


def test_checkpoint_round_trip_and_rng(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "optimizer": {}, "epoch": 2, "meta": {"x": [1, "a"]}}
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state["rng"] = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint(state, tmp_path / "a.pt", tmp_path / "b.pt")
    loaded = load_checkpoint(tmp_path / "b.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 2
    restore_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    save_checkpoint({"model": {}, "optimizer": {}, "epoch": 0, "meta": {}, "pad": torch.zeros(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage)
    plain = tmp_path / "plain.pt"
    torch.save({"model": {}}, plain)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(plain)


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "optimizer": {}, "epoch": 1, "meta": {}}, path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk died")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk died"):
        save_checkpoint({"model": {}, "optimizer": {}, "epoch": 2, "meta": {}}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind
