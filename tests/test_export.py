"""``letkd export``: a grafted student checkpoint becomes a .pt2 (torch.export) and ONNX file."""

from __future__ import annotations

import os

import pytest
import torch

from letkd.checkpoints import save_checkpoint
from letkd.cli import main
from letkd.config import config_from_dict
from letkd.deploy import graft_spec, load_student
from letkd.graft import graft
from letkd.layers import KDLayer
from letkd.models import create_model


@pytest.fixture(scope="module")
def grafted_checkpoint(tmp_path_factory):
    """A training-engine style checkpoint of a letKD-2 resnet8 (intermediate and penultimate KD layers) with
    trained-looking BatchNorm statistics."""
    torch.manual_seed(1)
    model = create_model("resnet8", num_classes=7)
    graft(model, "layer3.0", KDLayer(64, 6))
    graft(model, "layer3", KDLayer(64, 300, alpha=0.5))  # exported in chunks of 128 templates
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # non-trivial BN statistics
    model.eval()
    path = tmp_path_factory.mktemp("export") / "student.pt"
    meta = {"model_name": "resnet8", "num_classes": 7, "input_size": [3, 32, 32], "grafts": graft_spec(model)}
    save_checkpoint({"model": model.state_dict(), "epoch": 3, "metrics": {"top1": 0.1}, "meta": meta}, path)
    return path, model


def test_export_pt2_and_onnx_match_the_grafted_model(grafted_checkpoint, tmp_path, capsys):
    path, model = grafted_checkpoint
    out = tmp_path / "student.pt2"
    mask = os.umask(0o027)
    try:
        assert main(["export", str(path), "--out", str(out), "--onnx"]) == 0
    finally:
        os.umask(mask)
    printed = capsys.readouterr().out
    assert "graft layer3.0" in printed
    # 64·(6 + 300) templates, as many value weights, 6 + 300 shifts; 2·64·306 MACs at each of 8×8 positions
    assert "KD layers add 39,474 parameters" in printed and "2.5 M MACs" in printed
    for written in (out, out.with_suffix(".onnx")):  # both follow the umask, like every other artefact
        assert written.stat().st_mode & 0o777 == 0o640, oct(written.stat().st_mode)
    program = torch.export.load(out)
    # the KD layers are in their inference form: BatchNorm folded into one matrix product per chunk (1 + 3)
    assert sum(str(node.target) == "aten.addmm.default" for node in program.graph.nodes) == 4
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export example: the batch is dynamic
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(program.module()(x), expected, atol=1e-5, rtol=1e-5)
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(out.with_suffix(".onnx")))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    from onnx.reference import ReferenceEvaluator

    (logits,) = ReferenceEvaluator(proto).run(None, {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=1e-4)


def test_export_of_bare_state_dict_needs_the_model_name(tmp_path, capsys):
    model = create_model("resnet8", num_classes=5).eval()
    path = tmp_path / "plain.pt"
    save_checkpoint(model.state_dict(), path)
    assert main(["export", str(path), "--out", str(tmp_path / "a.pt2")]) == 1
    assert "--model is required" in capsys.readouterr().err
    assert main(["export", str(path), "--out", str(tmp_path / "a.pt2"), "--model", "resnet8"]) == 1
    assert "--num-classes" in capsys.readouterr().err
    assert not (tmp_path / "a.pt2").exists()
    out = tmp_path / "b.pt2"
    assert main(["export", str(path), "--out", str(out), "--model", "resnet8", "--num-classes", "5"]) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(out).module()(x), model(x), atol=1e-5, rtol=1e-5)


def test_export_refuses_kd_weights_without_graft_metadata(grafted_checkpoint, tmp_path, capsys):
    path, model = grafted_checkpoint
    bare = tmp_path / "bare.pt"
    save_checkpoint({"model": model.state_dict()}, bare)
    args = ["export", str(bare), "--out", str(tmp_path / "c.pt2"), "--model", "resnet8", "--num-classes=7"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "graft metadata" in err and "unexpected keys" in err and "layer3.letkd.templates.weight" in err


def test_export_rebuilds_a_student_built_with_model_kwargs(tmp_path):
    """The checkpoint's config.model.kwargs (a width that changes most layers) shape the rebuilt model."""
    name = "torchvision:mobilenet_v2"
    cfg = config_from_dict({"model": {"name": name, "num_classes": 6, "kwargs": {"width_mult": 0.25}}})
    torch.manual_seed(2)
    model = create_model(name, 6, **cfg.model.kwargs)
    assert model.state_dict().keys() == create_model(name, 6).state_dict().keys()  # same keys, other shapes
    graft(model, "features.14", KDLayer(model.features[14].out_channels, 5))
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # non-trivial BN statistics
    model.eval()
    meta = {"model_name": name, "num_classes": 6, "input_size": [3, 32, 32],
            "config": cfg.model_dump(mode="json"), "grafts": graft_spec(model)}  # fmt: skip
    path = tmp_path / "last.pt"
    save_checkpoint({"model": model.state_dict(), "optimizer": {}, "epoch": 0, "meta": meta}, path)
    rebuilt, _ = load_student(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), atol=0, rtol=0)
    out = tmp_path / "student.pt2"
    assert main(["export", str(path), "--out", str(out)]) == 0
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(out).module()(x), model(x), atol=1e-5, rtol=1e-5)
