"""The files the anchor tools write load weights-only (tests/anchor_files.py builds them from each tool's save
code): PyTorch 0.4.0 state_dicts, RepDistiller's options namespace, mdistiller's student and distiller files,
the letKD authors' networks, CUDA-tagged storages; strict loading accepts exactly what torch's does."""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import pathlib

import pytest
import torch
from torch import nn

from anchor_files import (
    letkd_author_file,
    mdistiller_files,
    pytorch040_state_dict,
    repdistiller_files,
    repdistiller_options,
    save,
    sgd_state,
)
from letkd.checkpoints import CheckpointError, read_checkpoint
from letkd.cli import main
from letkd.data.download import DownloadError
from letkd.models import create_model, load_weights, save_weights
from letkd.models import published as pub
from letkd.models.published import FileSource
from local_http import serve
from test_checkpoint import EXECUTED, CodeOnUnpickle

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_looking(arch: str = "resnet8", classes: int = 10, seed: int = 0) -> nn.Module:
    """A model in eval mode with non-trivial BatchNorm statistics (so that a lost buffer shows)."""
    torch.manual_seed(seed)
    model = create_model(arch, classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(5)
    return model.eval()


def _same_weights(model: nn.Module, reference: nn.Module) -> None:
    ref = reference.state_dict()
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, ref[key]), key


def test_a_pytorch_040_state_dict_loads_strictly_and_gives_the_same_logits(tmp_path):
    source = _trained_looking()
    state = pytorch040_state_dict(source)
    ckpt = {"epoch": 240, "model": state, "accuracy": torch.tensor(72.34), "optimizer": sgd_state(source)}
    path = save(ckpt, tmp_path / "ckpt_epoch_240.pth", legacy=True)
    raw = read_checkpoint(path)["model"]
    assert not any(k.endswith("num_batches_tracked") for k in raw) and not getattr(raw, "_metadata", None)
    assert b"cuda:0" in path.read_bytes()  # saved from a GPU, loaded on the CPU
    model = create_model("resnet8", 10)
    meta = load_weights(model, path)  # strict
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source(x), rtol=0, atol=0)
    assert meta["epoch"] == 240 and meta["accuracy"] == pytest.approx(72.34)
    assert all(int(b.num_batches_tracked) == 0 for b in model.modules() if isinstance(b, nn.BatchNorm2d))


def _cases(source: nn.Module) -> dict[str, tuple[dict, bool]]:
    """state_dict variants and whether torch's strict load_state_dict accepts them."""
    old = pytorch040_state_dict(source)
    current = source.state_dict()  # carries version metadata: the counter is expected
    no_counter = source.state_dict()
    no_counter.pop("layer1.0.bn1.num_batches_tracked")
    extra = copy.copy(old)
    extra["fc.extra"] = torch.zeros(1)
    no_stat = copy.copy(old)
    no_stat.pop("layer1.0.bn1.running_mean")
    no_weight = copy.copy(old)
    no_weight.pop("conv1.weight")
    wrong_shape = copy.copy(old)
    wrong_shape["fc.bias"] = torch.zeros(3)
    return {
        "pytorch 0.4.0": (old, True),
        "current": (current, True),
        "current without one counter": (no_counter, False),
        "stray extra weight": (extra, False),
        "missing running mean": (no_stat, False),
        "missing weight": (no_weight, False),
        "wrong shape": (wrong_shape, False),
    }


def test_strict_loading_accepts_exactly_what_torch_accepts(tmp_path):
    source = _trained_looking()
    for name, (state, accepted) in _cases(source).items():
        target = create_model("resnet8", 10)
        try:
            copy.deepcopy(target).load_state_dict(state, strict=True)
            torch_accepts = True
        except RuntimeError:
            torch_accepts = False
        path = save({"model": state}, tmp_path / "case.pth", legacy=False)
        try:
            load_weights(target, path)
            ours = True
        except CheckpointError as exc:
            ours = False
            assert "does not match" in str(exc)
        assert (ours, torch_accepts) == (accepted, accepted), name


def test_the_published_teacher_check_installs_a_pytorch_040_file(tmp_path, monkeypatch):
    monkeypatch.setenv(pub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(pub.MIRROR_ENV, raising=False)
    source = _trained_looking("resnet56", 100)
    good = {"epoch": 240, "model": pytorch040_state_dict(source), "accuracy": torch.tensor(72.34)}
    stray = dict(good, model=copy.copy(good["model"]))
    stray["model"]["fc.extra"] = torch.zeros(1)
    with serve() as server:
        for folder, ckpt in (("good", good), ("bad", stray)):
            data = save(ckpt, tmp_path / folder, legacy=True).read_bytes()
            server.files[f"/{folder}/resnet56_vanilla/ckpt_epoch_240.pth"] = data
        monkeypatch.setattr(pub, "SOURCES", [FileSource(server.url("/bad/{folder}/ckpt_epoch_240.pth"))])
        with pytest.raises(DownloadError, match="no usable resnet56(.|\n)*fc.extra"):
            pub.resolve_teacher_checkpoint("crd:resnet56")
        monkeypatch.setattr(pub, "SOURCES", [FileSource(server.url("/good/{folder}/ckpt_epoch_240.pth"))])
        path = pub.resolve_teacher_checkpoint("crd:resnet56")
    model = create_model("resnet56", 100)
    load_weights(model, path)
    _same_weights(model, source)


@pytest.fixture(scope="module")
def anchors(tmp_path_factory):
    """Every anchor file of one resnet8 (10 classes), and a letkd weights file of the same network."""
    folder = tmp_path_factory.mktemp("anchors")
    model = _trained_looking()
    files = {f"repdistiller {k}": p for k, p in repdistiller_files(model, folder).items()}
    teacher = _trained_looking(seed=1)
    files |= {f"mdistiller {k}": p for k, p in mdistiller_files(model, teacher, folder).items()}
    files["letkd authors"] = letkd_author_file(model, folder)
    files["letkd"] = save_weights(model, folder / "letkd.pt")
    return model, files


EXPECTED_META = {
    "repdistiller best": {"epoch": 231, "best_acc": 71.25},
    "repdistiller epoch": {"epoch": 240, "accuracy": 71.25},
    "mdistiller distiller": {"epoch": 240, "best_acc": 73.5, "part": "student"},
    "mdistiller student": {},
    "letkd authors": {"epoch": 240, "metric": 70.12, "format": "network"},
}


@pytest.mark.parametrize("kind", [*EXPECTED_META, "repdistiller last"])
def test_each_anchor_file_loads_the_network_weights_only(anchors, kind):
    model, files = anchors
    target = create_model("resnet8", 10)
    meta = load_weights(target, files[kind])
    _same_weights(target, model)
    for key, value in EXPECTED_META.get(kind, {}).items():
        assert meta[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    if kind == "repdistiller last":  # the options namespace, as plain data
        assert meta["opt"] == vars(repdistiller_options())
    assert "optimizer" not in meta


def test_letkd_eval_gives_the_same_result_on_every_anchor_file(anchors, capsys):
    _, files = anchors
    results = {}
    for kind, path in files.items():
        code = main(["eval", "--checkpoint", str(path), "--model", "resnet8", "--data", "digits", "--json",
                     "--workers", "0", "--device", "cpu"])  # fmt: skip
        assert code == 0, kind
        results[kind] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["letkd"]["images"] > 0
    for kind, result in results.items():
        assert result == results["letkd"], kind


def test_a_namespace_loads_but_every_other_global_is_refused(tmp_path):
    state = create_model("resnet8", 10).state_dict()
    ok = save({"opt": repdistiller_options(), "model": state}, tmp_path / "ok_last.pth", legacy=True)
    assert isinstance(read_checkpoint(ok)["opt"], argparse.Namespace)
    refused = {
        "date": {"opt": datetime.date(2020, 1, 1), "model": state},
        "code in a namespace": {"opt": argparse.Namespace(lr=0.05, hook=CodeOnUnpickle()), "model": state},
        "path in a namespace": {"opt": argparse.Namespace(out=pathlib.PurePosixPath("save")), "model": state},
    }
    for name, obj in refused.items():
        for legacy in (True, False):
            path = save(obj, tmp_path / f"{name}.pth", legacy=legacy, location="cpu")
            with pytest.raises(CheckpointError, match="would run code"):
                read_checkpoint(path)
    assert "unpickled" not in EXECUTED


def test_a_letkd_authors_student_whose_kd_layers_live_beside_it_is_refused_alone(tmp_path, capsys):
    model = _trained_looking()
    path = letkd_author_file(model, tmp_path)
    args = ["eval", "--checkpoint", str(path), "--model", "resnet8", "--data", "digits", "--workers", "0"]
    assert main(args) == 0  # a plain network of their code (vanilla, QuEST, a teacher)
    capsys.readouterr()
    letkd_author_file(nn.Sequential(nn.BatchNorm2d(4)), tmp_path, net="valueLayer_0")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "valueLayer_0_net_epoch240.best" in err and "wrong predictions" in err
