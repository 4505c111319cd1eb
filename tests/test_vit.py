"""Vision-transformer taps: a (B, N, C) token output is read as the (B, C, h, w) map of its patch tokens,
grafts act on the patch tokens only, baked/exported ViT students match the grafted ones, grids align by
pooling the finer one (or fail with one clear error)."""

from __future__ import annotations

import pytest
import torch

from letkd.build import check_run
from letkd.config import config_from_dict
from letkd.deploy import bake, export_program, write_onnx
from letkd.graft import graft, graft_scores
from letkd.layers import KDLayer
from letkd.methods.features import GridAlignmentError, aligned_grid
from letkd.models import create_model
from letkd.taps import FeatureTaps, TapError, TokenGrid, probe_shapes, token_grid

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_model("vit_pico_p4", num_classes=10).eval()


def hand_forward(model, x, at: int | None = None, kd_layer=None):
    """timm's ViT forward written out block by block; after block ``at`` the patch tokens go through
    ``kd_layer`` (a (B, C, 8, 8) map) and are written back behind the untouched class token."""
    tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    for i, block in enumerate(model.blocks):
        tokens = block(tokens)
        if i == at:
            cls, patches = tokens[:, :1], tokens[:, 1:]
            b, n, c = patches.shape
            x_hat, _ = kd_layer(patches.permute(0, 2, 1).reshape(b, c, 8, 8))
            tokens = torch.cat([cls, x_hat.reshape(b, c, n).permute(0, 2, 1)], dim=1)
    return model.forward_head(model.norm(tokens)), tokens


def test_token_map_is_a_view_and_round_trips_with_prefix_tokens_untouched():
    grid = TokenGrid(3, 4, prefix=2)
    tokens = torch.randn(2, 2 + 12, 5)
    fmap = grid.to_map(tokens)
    assert fmap.shape == (2, 5, 3, 4) and fmap.data_ptr() == tokens[:, 2:].data_ptr()  # a view, no copy
    assert torch.equal(fmap[:, :, 1, 2], tokens[:, 2 + 1 * 4 + 2])  # row-major patch order
    back = grid.to_tokens(fmap, tokens)
    assert torch.equal(back, tokens)
    changed = grid.to_tokens(fmap + 1, tokens)
    assert torch.equal(changed[:, :2], tokens[:, :2]) and torch.equal(changed[:, 2:], tokens[:, 2:] + 1)
    assert torch.equal(grid.to_map(tokens[:, 2:]), fmap)  # a sequence without prefix (patch embedding)
    with pytest.raises(TapError, match="13 tokens.*2 prefix \\+ 3×4 patch"):
        grid.to_map(tokens[:, 1:])


def test_token_taps_deliver_patch_maps_to_every_reader(vit):
    assert token_grid(vit) == TokenGrid(8, 8, 1)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        _, after_block = hand_forward(vit, x, at=None)
        with FeatureTaps(vit, ["penultimate", "stem"]) as taps:
            feats = taps(x)
    expected = after_block[:, 1:].transpose(1, 2).reshape(3, 64, 8, 8)
    assert torch.equal(feats["penultimate"], expected)
    assert feats["stem"].shape == (3, 64, 8, 8)
    assert probe_shapes(vit, ["intermediate", "penultimate"]) == {
        "intermediate": (64, 8, 8), "penultimate": (64, 8, 8)}


def test_graft_at_a_token_tap_equals_the_hand_written_forward(vit):
    student = create_model("vit_pico_p4", num_classes=10)
    student.load_state_dict(vit.state_dict())
    student.eval()
    handle = graft(student, "intermediate", KDLayer(64, 12, alpha=0.7))
    assert handle.target == "blocks.2"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, _ = hand_forward(vit, x, at=2, kd_layer=handle.module)
        logits = student(x)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert graft_scores(student)["blocks.2"].shape == (2, 12, 8, 8)
    with FeatureTaps(student, ["blocks.2"]) as taps:  # readers see the graft's output, as on a CNN
        with torch.no_grad():
            seen = taps(x)["blocks.2"]
    assert seen.shape == (2, 64, 8, 8)


def test_baked_and_exported_vit_student_equals_the_grafted_one(tmp_path):
    torch.manual_seed(2)
    student = create_model("vit_pico_p4", num_classes=10, img_size=16)  # a 4×4 grid keeps the export quick
    graft(student, "penultimate", KDLayer(64, 8))
    student.train()
    with torch.no_grad():
        student(torch.randn(8, 3, 16, 16))  # non-trivial BatchNorm statistics in the KD layer
    student.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = student(x)
        torch.testing.assert_close(bake(student, form="reference")(x), want, rtol=0, atol=0)
        torch.testing.assert_close(bake(student)(x), want, atol=1e-5, rtol=1e-5)  # the inference form
        program = export_program(student, (3, 16, 16))
        torch.testing.assert_close(program.module()(x), want, atol=1e-5, rtol=1e-5)
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from onnx.reference import ReferenceEvaluator  # onnx's own runtime: no onnxruntime needed

    write_onnx(program, tmp_path / "vit.onnx")
    run = ReferenceEvaluator(onnx.load(str(tmp_path / "vit.onnx")))
    (logits,) = run.run(None, {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), want, atol=1e-5, rtol=1e-5)


def test_grids_align_by_an_integer_factor_or_fail_with_one_clear_error():
    assert aligned_grid("s", (64, 8, 8), "t", (256, 16, 16), False) == (8, 8)  # teacher finer
    assert aligned_grid("s", (64, 8, 8), "t", (256, 4, 4), False) == (4, 4)  # student finer
    with pytest.raises(GridAlignmentError, match=r"^grid mismatch: student tap 's' gives \(64, 10, 10\)"):
        aligned_grid("s", (64, 10, 10), "t", (256, 8, 8), False)
    with pytest.raises(GridAlignmentError, match="integer multiple"):
        aligned_grid("s", (64, 8, 4), "t", (256, 4, 8), False)
    # the same check runs before any expensive stage: a patch-3 ViT has a 10×10 grid against resnet8's 8×8
    cfg = config_from_dict({
        "name": "g", "data": {"name": "digits"},
        "model": {"name": "vit_pico_p4", "kwargs": {"patch_size": 3}},
        "teacher": {"name": "resnet8"},
        "method": {"name": "letkd", "params": {"layers": [
            {"kind": "codebook", "student_tap": "penultimate", "teacher_tap": "penultimate",
             "num_templates": 8}]}},
    })
    from letkd.methods import get_method

    params = get_method("letkd").parse_params(cfg.method.params)
    with pytest.raises(GridAlignmentError, match="grid mismatch"):
        check_run(cfg, params, 10)


@pytest.mark.parametrize("name", ["kd", "fitnet", "at", "letkd"])
def test_a_vit_teacher_distils_into_a_cnn_student(name):
    from letkd.methods import MethodContext, get_method
    from letkd.supervision import Codebook, SubclassCodebook

    cls = get_method(name)
    params = cls.example_params()
    g = torch.Generator().manual_seed(0)
    supervision = None
    if name == "letkd":  # random supervision over the ViT teacher's 64-channel patch maps, 5 classes
        supervision = [
            SubclassCodebook(torch.randn(64, 4, generator=g), torch.rand(64, generator=g),
                             torch.randn(10, 4, generator=g), torch.softmax(torch.randn(10, 10), 1), 5),
            Codebook(torch.rand(16, 64, generator=g)),
        ]
    teacher = create_model("vit_pico_p4", 5, img_size=8)  # 2×2 tokens, resnet8's 2×2 maps at 8×8
    d = cls.from_config(create_model("resnet8", 5), teacher, params,
                        MethodContext(5, (3, 8, 8), supervision=supervision, num_train_samples=8))
    logits, losses = d.train()(torch.randn(4, 3, 8, 8), torch.arange(4) % 5)
    assert logits.shape == (4, 5) and all(torch.isfinite(v) for v in losses.values())
    torch.stack(list(losses.values())).sum().backward()
    assert all(p.grad is None for p in d.teacher.parameters())
