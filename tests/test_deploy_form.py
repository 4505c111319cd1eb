"""The KD layer's inference form (what ``bake`` ships): equal to the training layer in eval mode and counted
by the cost helpers (its export: tests/test_export.py)."""

from __future__ import annotations

import pytest
import torch

from letkd.cost import deployed_cost, describe_deployed_cost, kd_layer_cost, model_cost
from letkd.deploy import BakedGraft, bake
from letkd.graft import graft
from letkd.inference_form import InferenceKDLayer
from letkd.layers import KDLayer, TemplateHead
from letkd.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_layer(channels: int, templates: int, alpha: float = 1.0, dtype=torch.float32) -> KDLayer:
    """A KD layer in eval mode with trained-looking BatchNorm statistics, affine and scales."""
    layer = KDLayer(channels, templates, alpha=alpha).to(dtype)
    with torch.no_grad():
        layer.bn.running_mean.normal_(0.0, 0.5)
        layer.bn.running_var.uniform_(0.2, 3.0)
        layer.bn.weight.uniform_(-1.5, 1.5)
        layer.bn.bias.normal_(0.0, 0.5)
        layer.templates.scale.fill_(4.2)
        layer.values.scale.fill_(0.7)
    return layer.eval()


def features(batch: int, channels: int, size: int, dtype) -> torch.Tensor:
    x = torch.randn(batch, channels, size, size, dtype=dtype) * 3.0
    x[0, :, 0, 0] = 0.0  # an all-zero position: zero scores, as in the training layer
    return x


@pytest.mark.parametrize(
    ("dtype", "atol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"]
)
@pytest.mark.parametrize("chunk_bytes", [1 << 30, 5000], ids=["one-chunk", "many-chunks"])
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_inference_form_equals_the_training_layer_in_eval_mode(dtype, atol, chunk_bytes, alpha):
    layer = trained_layer(24, 300, alpha, dtype)
    fast = layer.inference_form()
    fast.chunk_bytes, fast.min_chunk = chunk_bytes, 1
    x = features(3, 24, 5, dtype)
    chunk = fast.chunk_size(3 * 25)
    assert chunk == 300 if chunk_bytes > 5000 else 300 // chunk > 4 and 300 % chunk  # a shorter last chunk
    with torch.no_grad():
        x_hat, scores = layer(x)
        got = fast(x)
        torch.testing.assert_close(fast.scores(x), scores, atol=atol, rtol=0)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, x_hat, atol=atol, rtol=0)
    assert not torch.equal(got, x)  # the residual is there
    x.requires_grad_(True)  # under autograd (no reused buffer) the same values, and a gradient
    recorded = fast(x)
    torch.testing.assert_close(recorded.detach(), got, atol=atol, rtol=0)
    recorded.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert fast(x.detach()[:0]).shape == (0, *x.shape[1:])  # an empty batch


def test_inference_form_reproduces_the_reference_fixture(layer_ref):
    """Built from the reference implementation's weights, the inference form gives its eval output."""
    t = torch.from_numpy
    for prefix, layer_prefix in (("pen", "pen_a1.0"), ("int", "int")):
        templates = layer_ref[f"{prefix}/template_weight"]
        layer = KDLayer(templates.shape[1], templates.shape[0]).eval()
        with torch.no_grad():
            layer.templates.weight.copy_(t(templates))
            layer.templates.scale.copy_(t(layer_ref[f"{prefix}/template_scale"]))
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(layer.bn, name).copy_(t(layer_ref[f"{layer_prefix}/bn_{name}"]))
            layer.values.weight.copy_(t(layer_ref[f"{layer_prefix}/value_weight"]))
            layer.values.scale.copy_(t(layer_ref[f"{layer_prefix}/value_scale"]))
            x = t(layer_ref[f"{prefix}/student_features"])
            out = layer.inference_form()(x)
        torch.testing.assert_close(out, t(layer_ref[f"{layer_prefix}/out_eval"]), atol=1e-4, rtol=1e-4)


def test_inference_form_under_torch_compile_runs_its_loop_as_one_operator():
    """torch.compile sees one opaque operator (no graph break) that sizes its chunks for the actual input."""
    layer = trained_layer(16, 100)
    fast = layer.inference_form()
    fast.chunk_bytes, fast.min_chunk = 4096, 1  # several chunks
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        for batch in (2, 5):
            x = features(batch, 16, 3, torch.float32)
            torch.testing.assert_close(compiled(x), layer(x)[0], atol=1e-5, rtol=1e-5)


def test_inference_form_under_cpu_autocast():
    layer = trained_layer(16, 100)
    fast = layer.inference_form()
    x = features(2, 16, 3, torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(fast(x).float(), layer(x)[0].float(), atol=0.1, rtol=0.05)


def test_chunk_size_keeps_a_chunk_of_the_map_within_its_budget():
    fast = KDLayer(64, 4096).eval().inference_form()
    assert fast.chunk_size(64) == 4096  # one small image: a single chunk
    for positions in (64 * 8 * 8, 3136, 100_000):
        chunk = fast.chunk_size(positions)
        assert chunk & (chunk - 1) == 0 and fast.min_chunk <= chunk <= 4096
        assert chunk * positions * 4 <= fast.chunk_bytes or chunk == fast.min_chunk
        assert 2 * chunk * positions * 4 > fast.chunk_bytes or chunk == 4096
    assert fast.chunk_size(10**9) == fast.min_chunk


def test_inference_form_refuses_layers_without_value_path_or_statistics():
    with pytest.raises(ValueError, match="alpha == 0"):
        KDLayer(8, 4, alpha=0.0).inference_form()
    layer = KDLayer(8, 4)
    layer.bn.track_running_stats, layer.bn.running_mean, layer.bn.running_var = False, None, None
    with pytest.raises(ValueError, match="running statistics"):
        layer.inference_form()


@pytest.fixture(scope="module")
def letkd2_student():
    """resnet20 with an intermediate and a penultimate KD layer (letKD-2) and trained-looking statistics."""
    torch.manual_seed(5)
    model = create_model("resnet20", num_classes=10)
    graft(model, "intermediate", KDLayer(64, 40))
    graft(model, "penultimate", KDLayer(64, 300, alpha=0.5))
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
    return model.eval()


def test_bake_ships_the_inference_form_by_default(letkd2_student):
    model = letkd2_student
    fast, reference = bake(model), bake(model, form="reference")
    assert isinstance(fast.layer3.graft, InferenceKDLayer) and isinstance(fast.layer3.base[0], BakedGraft)
    assert isinstance(reference.layer3.graft, KDLayer)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(reference(x), expected, atol=0, rtol=0)
        torch.testing.assert_close(fast(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="bake form 'quick'"):
        bake(model, form="quick")


def test_costs_of_the_deployed_student():
    model = create_model("resnet20", num_classes=100)
    plain = model_cost(model, (3, 32, 32))
    assert deployed_cost(model) == plain | {"extra_parameters": 0, "extra_macs": 0}
    assert "no KD layers kept" in describe_deployed_cost(deployed_cost(model))
    graft(model, "intermediate", KDLayer(64, 800))
    graft(model, "penultimate", KDLayer(64, 4096))
    cost = deployed_cost(model)
    macs = kd_layer_cost(64, 800, 8, 8)["macs"] + kd_layer_cost(64, 4096, 8, 8)["macs"]
    assert cost["extra_macs"] == macs == model_cost(model)["macs"] - plain["macs"]
    # the inference form stores 2·C·K + K parameters per layer (folded templates, shift, values)
    assert cost["extra_parameters"] == (2 * 64 + 1) * (800 + 4096)
    assert cost["parameters"] == plain["parameters"] + cost["extra_parameters"]
    line = describe_deployed_cost(cost)
    assert f"add {cost['extra_parameters']:,} parameters (+227%)" in line and "40.1 M MACs (+98%)" in line
    head = create_model("resnet20", num_classes=100)
    graft(head, "penultimate", TemplateHead(64, 4096))  # QuEST: nothing of the head is deployed
    assert deployed_cost(head)["extra_parameters"] == 0 == deployed_cost(head)["extra_macs"]
