"""CosineConv2d, KDLayer, TemplateHead, template_kl and the cost helpers against the reference fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from letkd.cost import kd_layer_cost, model_cost
from letkd.layers import CosineConv2d, KDLayer, TemplateHead
from letkd.template_loss import target_confidence, template_accuracy, template_kl

TOL = {"atol": 1e-4, "rtol": 1e-4}


def t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array))


def kd_layer_from_fixture(ref: dict, prefix: str, layer_prefix: str, alpha: float) -> KDLayer:
    """A KDLayer carrying the fixture's weights (loaded strictly through its state_dict keys)."""
    c = ref[f"{prefix}/student_features"].shape[1]
    k = ref[f"{prefix}/template_weight"].shape[0]
    layer = KDLayer(c, k, alpha=alpha)
    state = {
        "templates.weight": t(ref[f"{prefix}/template_weight"]),
        "templates.scale": t(ref[f"{prefix}/template_scale"]),
        "bn.weight": t(ref[f"{layer_prefix}/bn_weight"]),
        "bn.bias": t(ref[f"{layer_prefix}/bn_bias"]),
        "bn.running_mean": t(ref[f"{layer_prefix}/bn_running_mean"]),
        "bn.running_var": t(ref[f"{layer_prefix}/bn_running_var"]),
        "bn.num_batches_tracked": torch.tensor(0),
        "values.weight": t(ref[f"{layer_prefix}/value_weight"]),
        "values.scale": t(ref[f"{layer_prefix}/value_scale"]),
    }
    layer.load_state_dict(state, strict=True)
    return layer


# ---------------------------------------------------------------------------------------------------------
# reference fixtures


@pytest.mark.parametrize("prefix", ["pen", "int"])
def test_template_scores_match_reference(layer_ref, prefix):
    w = layer_ref[f"{prefix}/template_weight"]
    conv = CosineConv2d(w.shape[1], w.shape[0], scale=1.0)
    conv.load_state_dict({"weight": t(w), "scale": t(layer_ref[f"{prefix}/template_scale"])})
    scores = conv(t(layer_ref[f"{prefix}/student_features"]))
    torch.testing.assert_close(scores, t(layer_ref[f"{prefix}/scores"]), **TOL)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_kd_layer_output_matches_reference(layer_ref, alpha, mode):
    layer = kd_layer_from_fixture(layer_ref, "pen", f"pen_a{alpha}", alpha)
    layer.train(mode == "train")
    x = t(layer_ref["pen/student_features"])
    x_hat, scores = layer(x)
    torch.testing.assert_close(scores, t(layer_ref["pen/scores"]), **TOL)
    torch.testing.assert_close(x_hat, t(layer_ref[f"pen_a{alpha}/out_{mode}"]), **TOL)


def test_intermediate_kd_layer_matches_reference(layer_ref):
    layer = kd_layer_from_fixture(layer_ref, "int", "int", 1.0).eval()
    x_hat, scores = layer(t(layer_ref["int/student_features"]))
    torch.testing.assert_close(scores, t(layer_ref["int/scores"]), **TOL)
    torch.testing.assert_close(x_hat, t(layer_ref["int/out_eval"]), **TOL)


def test_template_kl_matches_reference(layer_ref):
    pen = kd_layer_from_fixture(layer_ref, "pen", "pen_a1.0", 1.0)
    _, scores = pen(t(layer_ref["pen/student_features"]))
    targets = t(layer_ref["pen/teacher_targets_BHWK"]).permute(0, 3, 1, 2)
    torch.testing.assert_close(template_kl(scores, targets).double(), t(layer_ref["pen/kl_loss"]), **TOL)

    inter = kd_layer_from_fixture(layer_ref, "int", "int", 1.0)
    _, scores = inter(t(layer_ref["int/student_features"]))
    b, k, h, w = scores.shape
    targets = t(layer_ref["int/teacher_targets_BHW_x_S"]).reshape(b, h, w, k).permute(0, 3, 1, 2)
    torch.testing.assert_close(template_kl(scores, targets).double(), t(layer_ref["int/kl_loss"]), **TOL)


# ---------------------------------------------------------------------------------------------------------
# CosineConv2d properties


@pytest.mark.parametrize("cin,cout", [(8, 24), (24, 8)])  # both code paths (normalise input / divide output)
def test_cosine_conv_invariances_and_bounds(cin, cout):
    conv = CosineConv2d(cin, cout, scale=2.5)
    x = torch.randn(3, cin, 5, 4)
    y = conv(x)
    assert y.shape == (3, cout, 5, 4)
    assert y.abs().max() <= 2.5 + 1e-5
    per_position = torch.rand(3, 1, 5, 4) * 10 + 0.1
    torch.testing.assert_close(conv(x * per_position), y, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(cout, 1, 1, 1) * 5 + 0.2)
    torch.testing.assert_close(conv(x), y, atol=1e-5, rtol=1e-5)
    # equals the explicit formula s * <w/|w|, x/|x|>
    w = conv.weight.flatten(1)
    unit_x = x / x.norm(dim=1, keepdim=True)
    expected = 2.5 * torch.einsum("kc,bchw->bkhw", w / w.norm(dim=1, keepdim=True), unit_x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cin,cout", [(8, 24), (24, 8)])
def test_cosine_conv_zero_position_gives_zero_and_finite_grads(cin, cout):
    conv = CosineConv2d(cin, cout, scale=3.0)
    x = torch.randn(2, cin, 3, 3)
    x[0, :, 1, 2] = 0
    x.requires_grad_(True)
    y = conv(x)
    assert torch.all(y[0, :, 1, 2] == 0)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(conv.weight.grad).all()


def test_cosine_conv_init_and_scale_options():
    conv = CosineConv2d(512, 256, scale=None)
    assert conv.scale is None and conv.weight.shape == (256, 512, 1, 1)
    assert conv.weight.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.02)
    assert abs(conv.weight.flatten(1).norm(dim=1).mean().item() - 2**0.5) < 0.05
    y = conv(torch.randn(2, 512, 2, 2))
    assert y.abs().max() <= 1 + 1e-5
    fixed = CosineConv2d(4, 4, scale=2.0, learn_scale=False)
    assert fixed.scale.shape == (1,) and not fixed.scale.requires_grad
    assert [n for n, _ in CosineConv2d(4, 4, scale=1.0).named_parameters()] == ["weight", "scale"]


@pytest.mark.parametrize("cin,cout", [(5, 7), (7, 3)])
def test_cosine_conv_gradcheck(cin, cout):
    conv = CosineConv2d(cin, cout, scale=1.7).double()
    x = torch.randn(2, cin, 2, 3, dtype=torch.float64, requires_grad=True)
    inputs = (x, conv.weight, conv.scale)
    assert torch.autograd.gradcheck(lambda inp, w, s: _cos_call(conv, inp, w, s), inputs)


def _cos_call(conv: CosineConv2d, x, weight, scale):
    return torch.func.functional_call(conv, {"weight": weight, "scale": scale}, (x,))


# ---------------------------------------------------------------------------------------------------------
# KDLayer / TemplateHead


def test_kd_layer_shapes_submodules_and_alpha_zero_identity():
    layer = KDLayer(16, 32, alpha=0.0)
    x = torch.randn(2, 16, 4, 4)
    x_hat, scores = layer(x)
    assert x_hat is x and scores.shape == (2, 32, 4, 4)
    assert not layer.uses_value_path and not layer.modifies_output
    assert {n for n, _ in layer.named_children()} == {"templates", "bn", "values"}
    assert "alpha" not in dict(layer.named_parameters()) and "alpha" not in layer.state_dict()
    assert "alpha=0" in repr(layer)
    assert layer.templates.scale.item() == 3.0 and layer.values.scale.item() == 1.0
    assert (layer.templates.in_channels, layer.templates.out_channels) == (16, 32)
    assert (layer.values.in_channels, layer.values.out_channels) == (32, 16)
    assert len(layer.value_path_parameters()) == 4

    layer.alpha = 1.0
    x_hat, scores2 = layer(x)
    assert layer.uses_value_path and x_hat.shape == x.shape and not torch.equal(x_hat, x)
    torch.testing.assert_close(scores2, scores)
    torch.testing.assert_close(x_hat, x + layer.value_vectors(scores))


def test_kd_layer_gradients_reach_every_parameter_with_alpha():
    layer = KDLayer(8, 12, alpha=0.7)
    x_hat, scores = layer(torch.randn(4, 8, 3, 3))
    (x_hat.square().mean() + scores.mean()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_template_head_returns_scores_only():
    head = TemplateHead(8, 10, template_scale=2.0)
    scores = head(torch.randn(2, 8, 3, 3))
    assert scores.shape == (2, 10, 3, 3) and scores.abs().max() <= 2.0 + 1e-5
    assert not head.modifies_output and head.templates.scale.requires_grad


# ---------------------------------------------------------------------------------------------------------
# loss


def _explicit_kl(scores: np.ndarray, targets: np.ndarray) -> float:
    k = scores.shape[1]
    a = np.moveaxis(scores.astype(np.float64), 1, -1).reshape(-1, k)
    p = np.moveaxis(targets.astype(np.float64), 1, -1).reshape(-1, k)
    log_q = a - a.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return float((plogp - p * log_q).sum() / a.shape[0])


def test_template_kl_equals_explicit_sum_with_zero_targets():
    scores = torch.randn(3, 6, 2, 5) * 3
    targets = torch.softmax(torch.randn(3, 6, 2, 5) * 4, dim=1)
    targets[:, 2] = 0
    targets = targets / targets.sum(1, keepdim=True)
    loss = template_kl(scores, targets)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(_explicit_kl(scores.numpy(), targets.numpy()), rel=1e-5)


def test_template_kl_with_subnormal_targets():
    """Peaked teacher assignments hold float32 subnormals (< 1.2e-38) beside exact zeros."""
    scores = torch.randn(2, 8, 3, 3) * 3
    targets = torch.softmax(torch.randn(2, 8, 3, 3) * 40, dim=1)
    targets[:, 1] = 1e-40
    targets[:, 2] = 0
    assert ((targets > 0) & (targets < torch.finfo(torch.float32).tiny)).any()
    expected = _explicit_kl(scores.double().numpy(), targets.double().numpy())
    assert template_kl(scores, targets).item() == pytest.approx(expected, rel=1e-5)


def test_template_kl_one_hot_targets_is_cross_entropy_and_finite():
    scores = torch.randn(2, 9, 3, 3, requires_grad=True)
    labels = torch.randint(0, 9, (2, 3, 3))
    one_hot = F.one_hot(labels, 9).permute(0, 3, 1, 2).float()
    loss = template_kl(scores, one_hot)
    torch.testing.assert_close(loss, F.cross_entropy(scores, labels))
    loss.backward()
    assert torch.isfinite(scores.grad).all()
    extreme = torch.full((1, 4, 1, 1), -1e4)
    extreme[0, 0] = 1e4
    assert torch.isfinite(template_kl(extreme, one_hot[:1, :4, :1, :1].roll(1, dims=1)))


def test_template_kl_gradcheck():
    scores = torch.randn(2, 5, 2, 2, dtype=torch.float64, requires_grad=True)
    targets = torch.softmax(torch.randn(2, 5, 2, 2, dtype=torch.float64), dim=1)
    targets[0, :, 0, 0] = torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: template_kl(s, targets), (scores,))
    positive = torch.softmax(torch.randn(2, 5, 2, 2, dtype=torch.float64), 1).requires_grad_(True)
    assert torch.autograd.gradcheck(template_kl, (scores, positive))


def test_template_accuracy_and_confidence():
    scores = torch.randn(4, 7, 3, 3)
    targets = torch.softmax(torch.randn(4, 7, 3, 3) * 3, dim=1)
    agree = (scores.numpy().argmax(1) == targets.numpy().argmax(1)).mean()
    assert template_accuracy(scores, targets).item() == pytest.approx(agree)
    assert template_accuracy(targets, targets).item() == 1.0
    assert target_confidence(targets).item() == pytest.approx(targets.numpy().max(1).mean(), rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        template_kl(scores, targets[:, :3])


# ---------------------------------------------------------------------------------------------------------
# cost


def test_kd_layer_cost_matches_spec_and_module():
    cost = kd_layer_cost(64, 4096, 8, 8)
    assert cost["parameters"] == 64 * 4096 + 1 + 2 * 4096 + 4096 * 64 + 1 == 532_482
    assert cost["parameters"] == sum(p.numel() for p in KDLayer(64, 4096).parameters())
    assert cost["macs"] == 2 * 64 * 4096 * 64


def test_model_cost_counts_grafted_layer():
    from letkd.graft import graft
    from letkd.models import create_model

    model = create_model("resnet20", num_classes=100)
    plain = model_cost(model, (3, 32, 32))
    # resnet20 (CIFAR-100): ~0.28 M parameters, ~41 M MACs
    assert 270_000 < plain["parameters"] < 280_000 and 40e6 < plain["macs"] < 42e6
    graft(model, "layer3", KDLayer(64, 4096))
    grafted = model_cost(model, (3, 32, 32))
    expected = kd_layer_cost(64, 4096, 8, 8)
    assert grafted["parameters"] - plain["parameters"] == expected["parameters"]
    assert grafted["macs"] - plain["macs"] == expected["macs"]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_cosine_conv_gradients_equal_plain_autograd_formula(memory_format):
    """The narrow (K → C) path has a hand-written backward: compare it with autograd on the formula."""
    conv = CosineConv2d(40, 6, scale=1.3)
    x = torch.randn(3, 40, 4, 5).contiguous(memory_format=memory_format).requires_grad_(True)
    y = conv(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    w2 = conv.weight.detach().clone().requires_grad_(True)
    s2 = conv.scale.detach().clone().requires_grad_(True)
    unit_w = F.normalize(w2.flatten(1), dim=1) * s2
    y2 = torch.einsum("kc,bchw->bkhw", unit_w, x2) / x2.norm(dim=1, keepdim=True)
    (y2 * g).sum().backward()
    torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(conv.weight.grad, w2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(conv.scale.grad, s2.grad, atol=1e-5, rtol=1e-4)


def test_kd_layer_scores_are_channels_last_views_and_work_on_both_layouts():
    """Scores come out as (B, K, H, W) views of position rows; both input layouts give the same result."""
    torch.manual_seed(0)
    layer = KDLayer(8, 32).eval()
    x = torch.randn(2, 8, 3, 3)
    out, scores = layer(x)
    assert scores.shape == (2, 32, 3, 3) and scores.is_contiguous(memory_format=torch.channels_last)
    out_cl, scores_cl = layer(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, out_cl)
    torch.testing.assert_close(scores, scores_cl)


def test_template_kl_same_value_and_gradient_for_both_layouts():
    scores = torch.randn(2, 9, 3, 3)
    targets = torch.softmax(torch.randn(2, 9, 3, 3), dim=1)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        s = scores.detach().contiguous(memory_format=fmt).requires_grad_(True)
        loss = template_kl(s, targets.contiguous(memory_format=fmt))
        loss.backward()
        results.append((loss.detach(), s.grad))
    expected = F.kl_div(
        F.log_softmax(scores, 1).movedim(1, -1).reshape(-1, 9),
        targets.movedim(1, -1).reshape(-1, 9),
        reduction="batchmean",
    )
    for loss, grad in results:
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(grad, results[0][1])


def test_template_kl_backward_can_run_twice_with_retained_graph():
    scores = torch.randn(2, 5, 2, 2, requires_grad=True)
    loss = template_kl(scores, torch.softmax(torch.randn(2, 5, 2, 2), 1))
    loss.backward(retain_graph=True)
    first = scores.grad.clone()
    loss.backward()
    torch.testing.assert_close(scores.grad, 2 * first)


def test_template_kl_value_is_accurate_on_large_high_entropy_maps():
    """The logged value: rows are reduced on their own and summed in float64, so a 4096 × 1024 map of
    near-uniform targets (where Σ P log P and the cross term almost cancel) matches float64 to 1e-5."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4096, 1024, generator=g) * 0.5
    targets = torch.softmax(torch.randn(4096, 1024, generator=g) * 0.3, dim=1)
    p, a = targets.double(), scores.double()
    expected = (p * (p.log() - torch.log_softmax(a, dim=1))).sum() / len(p)
    as_map = lambda rows: rows.view(4, 32, 32, 1024).permute(0, 3, 1, 2)  # noqa: E731  (B, K, H, W)
    got = template_kl(as_map(scores), as_map(targets))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
