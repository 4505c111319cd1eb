"""Distillation methods: params validation, start-up checks, loss values re-derived independently, one
training step each (only the student and the method's own modules learn; the teacher stays frozen)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from letkd.config import ConfigError
from letkd.methods import get_method, list_methods
from letkd.models import create_model
from letkd.template_loss import template_kl
from method_helpers import (
    CODEBOOK_LAYER,
    NC,
    SPC,
    SUBCLASS_LAYER,
    K,
    _batch,
    _build,
    _capture,
    _ce,
    _codebook,
    _kl_positions,
    _log_softmax,
    _np,
    _subclass,
    _teacher_logits,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


# --------------------------------------------------------------------------------------------------------
# registry and params


def test_registry_lists_every_method():
    assert {"vanilla", "kd", "fitnet", "at", "sp", "dkd", "quest", "letkd"} <= set(list_methods())


def test_unknown_param_is_an_error_naming_method_and_key():
    with pytest.raises(ConfigError, match=r"method 'kd'.*\n.*unknown key 'method.params.temprature'"):
        _build("kd", {"temprature": 3.0})


def test_unknown_key_inside_a_layer_is_an_error():
    bad = dict(CODEBOOK_LAYER, tau=1.0)
    with pytest.raises(ConfigError, match=r"(?s)letkd.*layers\.0\.codebook\.tau"):
        get_method("letkd").parse_params({"layers": [bad]})


def test_quest_layers_take_no_alpha():
    with pytest.raises(ConfigError, match=r"(?s)quest.*alpha"):
        get_method("quest").parse_params({"layers": [dict(CODEBOOK_LAYER, alpha=1.0)]})


def test_params_defaults_are_the_papers():
    kd = get_method("kd").parse_params({})
    assert (kd.temperature, kd.ce_weight, kd.kd_weight) == (4.0, 0.1, 0.9)
    dkd = get_method("dkd").parse_params({})
    assert (dkd.alpha, dkd.beta, dkd.temperature, dkd.ce_weight, dkd.warmup) == (1.0, 8.0, 4.0, 1.0, 20)
    assert get_method("fitnet").parse_params({}).weight == 100.0
    assert get_method("at").parse_params({}).weight == 1000.0
    assert get_method("sp").parse_params({}).weight == 3000.0
    layers = [{"kind": "codebook", "student_tap": "a", "teacher_tap": "b"},
              {"kind": "subclass", "student_tap": "c", "teacher_tap": "d"}]
    letkd = get_method("letkd").parse_params({"layers": layers})
    cb, sub = letkd.layers[0], letkd.layers[1]
    assert (cb.num_templates, cb.temperature, cb.alpha, cb.weight) == (4096, 1.0, 1.0, 1.0)
    assert (sub.subclasses_per_class, sub.lda_components, sub.alpha) == (8, 60, 1.0)
    quest = get_method("quest").parse_params({"layers": [{"student_tap": "a", "teacher_tap": "b"}]})
    assert (quest.layers[0].num_templates, quest.layers[0].temperature) == (4096, 5.0)


# --------------------------------------------------------------------------------------------------------
# start-up checks


class _StrideTwoNet(nn.Module):
    """A teacher whose penultimate map is 4×4 at 8 px (twice resnet8's 2×2)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(12, NC)
        self.taps = {"penultimate": "features", "intermediate": "features.0"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def test_a_finer_teacher_grid_without_teacher_pool_pools_the_teacher_features():
    pair = (create_model("resnet8", NC), _StrideTwoNet())
    cb = _codebook(12)
    d = _build("letkd", {"layers": [CODEBOOK_LAYER]}, [cb], pair)
    images, labels = _batch()
    with torch.no_grad():
        pooled = nn.functional.avg_pool2d(d.teacher.module.features(images), 2)  # 4x4 -> the student's 2x2
    (targets,) = d.targets(images, labels)
    torch.testing.assert_close(targets, cb.targets(pooled))  # as teacher_pool does
    assert targets.shape == (4, K, 2, 2)
    (lazy,) = d.targets.lazy(images, labels)  # the form the training step's fused loss reads
    scores = torch.randn(4, K, 2, 2)
    torch.testing.assert_close(template_kl(scores, lazy), template_kl(scores, targets))


def test_teacher_pool_matches_grids_and_pools_targets():
    pair = (create_model("resnet8", NC), _StrideTwoNet())
    cb = _codebook(12)
    d = _build("letkd", {"layers": [dict(CODEBOOK_LAYER, teacher_pool=True)]}, [cb], pair)
    images, labels = _batch()
    with torch.no_grad():
        pooled = nn.functional.avg_pool2d(d.teacher.module.features(images), 2)
    (targets,) = d.targets(images, labels)
    torch.testing.assert_close(targets, cb.targets(pooled))
    assert targets.shape == (4, K, 2, 2)


def test_supervision_of_the_wrong_dimension_is_reported():
    with pytest.raises(ConfigError, match=r"expects 10-channel features.*'penultimate' gives \(64, 2, 2\)"):
        _build("letkd", {"layers": [CODEBOOK_LAYER]}, [_codebook(10)])


def test_template_count_must_match_supervision():
    with pytest.raises(ConfigError, match=r"gives 6 targets per location but params say 7"):
        _build("quest", {"layers": [dict(CODEBOOK_LAYER, num_templates=7)]}, [_codebook()])


def test_missing_supervision_is_reported():
    with pytest.raises(ConfigError, match="one supervision module per entry"):
        _build("letkd", {"layers": [SUBCLASS_LAYER, CODEBOOK_LAYER]}, [_codebook()])


def test_unknown_tap_is_reported():
    with pytest.raises(ConfigError, match=r"student tap 'stage9'"):
        _build("fitnet", {"student_tap": "stage9"})


# --------------------------------------------------------------------------------------------------------
# loss values against independent numpy computations


def test_kd_losses():
    d = _build("kd", {"temperature": 3.0})
    d.train()
    images, labels = _batch()
    logits, losses = d.forward_train(images, labels)
    s, t, y = _np(logits), _teacher_logits(d, images), labels.numpy()
    p_t = np.exp(_log_softmax(t / 3.0, 1))
    kl = (p_t * (np.log(p_t) - _log_softmax(s / 3.0, 1))).sum() / len(y) * 9.0
    assert set(losses) == {"loss_ce", "loss_kd"}
    np.testing.assert_allclose(losses["loss_ce"].item(), 0.1 * _ce(s, y), rtol=1e-5)
    np.testing.assert_allclose(losses["loss_kd"].item(), 0.9 * kl, rtol=1e-4)


def test_dkd_losses_and_warmup():
    d = _build("dkd", {"beta": 2.0, "warmup": 4})
    d.train()
    images, labels = _batch()
    s_logits = []
    results = []
    for epoch in (0, 1, 3, 10):
        d.set_epoch(epoch)
        logits, losses = d.forward_train(images, labels)
        s_logits.append(_np(logits))
        results.append(losses["loss_kd"].item())
    t, y = _teacher_logits(d, images), labels.numpy()
    s = s_logits[-1]
    ps, pt = np.exp(_log_softmax(s / 4, 1)), np.exp(_log_softmax(t / 4, 1))
    rows = np.arange(len(y))
    bs = np.stack([ps[rows, y], 1 - ps[rows, y]], 1)
    bt = np.stack([pt[rows, y], 1 - pt[rows, y]], 1)
    keep = np.ones_like(s, dtype=bool)
    keep[rows, y] = False
    qs = np.exp(_log_softmax((s / 4)[keep].reshape(len(y), -1), 1))
    qt = np.exp(_log_softmax((t / 4)[keep].reshape(len(y), -1), 1))
    full = 16 * ((bt * np.log(bt / bs)).sum() + 2.0 * (qt * np.log(qt / qs)).sum()) / len(y)
    np.testing.assert_allclose(results, [full / 4, full / 2, full, full], rtol=1e-4)


def _bn_train(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5)


def test_fitnet_losses():
    d = _build("fitnet", {})
    d.train()
    feats: dict = {}
    hooks = [_capture(d.student.layer2, feats, "s"), _capture(d.teacher.module.layer2, feats, "t")]
    images, labels = _batch()
    logits, losses = d.forward_train(images, labels)
    for h in hooks:
        h.remove()
    conv = d.regressor.conv
    assert conv.kernel_size == (1, 1)  # same grid: a 1×1 regressor
    w, b = _np(conv.weight)[:, :, 0, 0], _np(conv.bias)
    reg = np.einsum("oc,bchw->bohw", w, _np(feats["s"])) + b[None, :, None, None]
    hint = np.maximum(_bn_train(reg), 0)
    expected = 100.0 * ((hint - _np(feats["t"])) ** 2).mean()
    np.testing.assert_allclose(losses["loss_kd"].item(), expected, rtol=1e-4)
    np.testing.assert_allclose(losses["loss_ce"].item(), _ce(_np(logits), labels.numpy()), rtol=1e-5)


def _attention(f: np.ndarray) -> np.ndarray:
    a = (f**2).mean(1).reshape(len(f), -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _stage_features(d, images, labels):
    feats: dict = {}
    hooks = [_capture(getattr(net, name), feats, f"{role}{name}")
             for role, net in (("s", d.student), ("t", d.teacher.module))
             for name in ("layer1", "layer2", "layer3")]
    logits, losses = d.forward_train(images, labels)
    for h in hooks:
        h.remove()
    return logits, losses, {k: _np(v) for k, v in feats.items()}


def test_at_losses():
    d = _build("at", {})
    d.train()
    logits, losses, f = _stage_features(d, *_batch())
    expected = 1000.0 * sum(((_attention(f[f"s{n}"]) - _attention(f[f"t{n}"])) ** 2).mean()
                            for n in ("layer1", "layer2", "layer3"))
    np.testing.assert_allclose(losses["loss_kd"].item(), expected, rtol=1e-4)


def test_sp_losses():
    d = _build("sp", {})
    d.train()
    logits, losses, f = _stage_features(d, *_batch())

    def gram(x):
        x = x.reshape(len(x), -1)
        g = x @ x.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    s, t = f["slayer3"], f["tlayer3"]
    expected = 3000.0 * ((gram(t) - gram(s)) ** 2).sum() / len(s) ** 2
    np.testing.assert_allclose(losses["loss_kd"].item(), expected, rtol=1e-4)


def _codebook_targets(feat: np.ndarray, centers: np.ndarray, tau: float) -> np.ndarray:
    """(B, D, H, W) -> (B, K, H, W): softmax over K of −τ‖f − c_k‖²."""
    d2 = ((feat[:, None] - centers[None, :, :, None, None]) ** 2).sum(2)
    return np.exp(_log_softmax(-tau * d2, 1))


def _cosine_scores(x: np.ndarray, weight: np.ndarray, scale: float) -> np.ndarray:
    w = weight[:, :, 0, 0]
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return scale * np.einsum("kc,bchw->bkhw", w, xn)


def test_quest_losses_use_tau_5_and_raw_features():
    cb = _codebook()
    d = _build("quest", {"layers": [CODEBOOK_LAYER]}, [cb])
    d.train()
    feats: dict = {}
    hooks = [_capture(d.student.layer3, feats, "s"), _capture(d.teacher.module.layer3, feats, "t")]
    images, labels = _batch()
    logits, losses = d.forward_train(images, labels)
    for h in hooks:
        h.remove()
    head = d.heads[0].templates
    scores = _cosine_scores(_np(feats["s"]), _np(head.weight), head.scale.item())
    targets = _codebook_targets(_np(feats["t"]), _np(cb.centers), 5.0)
    assert set(losses) == {"loss_ce", "loss_kd_penultimate"}
    expected = _kl_positions(targets, scores)
    np.testing.assert_allclose(losses["loss_kd_penultimate"].item(), expected, rtol=1e-4)
    # no value path: the student's logits are those of the plain network
    torch.testing.assert_close(logits, d.student(images))
    assert d.extra_parameters() == 0
    assert not any("letkd" in k for k in d.student.state_dict())


def test_letkd2_losses_on_back_to_back_layers():
    """resnet8: the intermediate tap layer3.0 is all of layer3, so both KD layers run back to back."""
    cb, sub = _codebook(), _subclass()
    params = {"layers": [dict(SUBCLASS_LAYER, alpha=0.5), dict(CODEBOOK_LAYER, weight=2.0)], "ce_weight": 1.0}
    d = _build("letkd", params, [sub, cb])
    d.train()
    inter, pen = (h.module for h in d.handles)
    assert d.student.get_submodule("layer3.0.letkd") is inter
    assert d.student.get_submodule("layer3.letkd") is pen
    store: dict = {}
    hooks = [_capture(inter, store, "x_int", inputs=True), _capture(pen, store, "x_pen", inputs=True),
             _capture(inter, store, "out_int"), _capture(d.teacher.module.layer3, store, "t")]
    images, labels = _batch()
    logits, losses = d.forward_train(images, labels)
    for h in hooks:
        h.remove()
    # the penultimate layer receives the intermediate layer's x_hat
    torch.testing.assert_close(store["x_pen"], store["out_int"][0])
    t = _np(store["t"])
    y = labels.numpy()
    # sub-class targets: LDA projection, nearest centre among the label's own sub-classes, score-matrix row
    z = np.einsum("bdhw,dr->bhwr", t - _np(sub.lda_xbar)[None, :, None, None], _np(sub.lda_scalings)[:, :3])
    centres = _np(sub.centers).reshape(NC, SPC, 3)
    own = centres[y]  # (B, SPC, 3)
    d2 = ((z[:, :, :, None, :] - own[:, None, None]) ** 2).sum(-1)  # (B, H, W, SPC)
    rows = y[:, None, None] * SPC + d2.argmin(-1)
    sub_targets = _np(sub.score_matrix)[rows].transpose(0, 3, 1, 2)
    s_int = _cosine_scores(_np(store["x_int"]), _np(inter.templates.weight), inter.templates.scale.item())
    s_pen = _cosine_scores(_np(store["x_pen"]), _np(pen.templates.weight), pen.templates.scale.item())
    cb_targets = _codebook_targets(t, _np(cb.centers), 1.0)
    assert list(losses) == ["loss_ce", "loss_kd_intermediate", "loss_kd_penultimate"]
    np.testing.assert_allclose(losses["loss_kd_intermediate"].item(), _kl_positions(sub_targets, s_int),
                               rtol=1e-4)
    np.testing.assert_allclose(losses["loss_kd_penultimate"].item(),
                               2.0 * _kl_positions(cb_targets, s_pen), rtol=1e-4)
    np.testing.assert_allclose(losses["loss_ce"].item(), _ce(_np(logits), y), rtol=1e-5)
    assert inter.alpha == 0.5 and pen.alpha == 1.0


def test_letkd_layers_stay_in_the_deployed_student():
    d = _build("letkd", {"layers": [CODEBOOK_LAYER]}, [_codebook()])
    layer = d.handles[0].module
    # K·C templates + scale, 2K BN, C·K values + scale (SPEC §1.3)
    assert d.extra_parameters() == 2 * K * 64 + 2 + 2 * K
    assert any(k.startswith("layer3.letkd.") for k in d.student.state_dict())
    d.eval()
    images, _ = _batch()
    with torch.no_grad():
        plain = layer.alpha
        out = d.forward_test(images)
        layer.alpha = 0.0
        without = d.student(images)
        layer.alpha = plain
    assert not torch.allclose(out, without)  # the KD layer changes the prediction


# --------------------------------------------------------------------------------------------------------
# one training step: only the student and the method's own modules learn


def test_hint_regressor_follows_repdistiller_grid_rules():
    from letkd.methods.fitnet import HintRegressor

    x = torch.randn(2, 8, 8, 8)
    assert HintRegressor((8, 8, 8), (16, 4, 4))(x).shape == (2, 16, 4, 4)  # 3×3 stride 2
    assert HintRegressor((8, 8, 8), (16, 16, 16))(x).shape == (2, 16, 16, 16)  # transposed conv
    assert HintRegressor((8, 8, 8), (16, 6, 6))(x).shape == (2, 16, 6, 6)  # (1+8−6)² kernel
    with pytest.raises(ValueError):
        HintRegressor((8, 4, 4), (16, 6, 6))


def test_letkd_targets_reuse_a_buffer_and_each_step_keeps_its_own_loss_graph():
    cb = _codebook()
    d = _build("letkd", {"layers": [CODEBOOK_LAYER]}, [cb])
    d.train()
    images, labels = _batch()
    first = d.targets(images, labels)[0]
    second = d.targets(images, labels)[0]
    assert first.data_ptr() == second.data_ptr()  # one buffer per layer across steps
    # the training loss computes its targets a chunk at a time and keeps no buffer across steps: a graph
    # stays valid after the next forward pass
    params = [p for p in d.parameters() if p.requires_grad]
    _, losses = d.forward_train(images, labels)
    _, again = d.forward_train(images, labels)
    grads = torch.autograd.grad(sum(losses.values()), params)
    for g, h in zip(grads, torch.autograd.grad(sum(again.values()), params)):
        torch.testing.assert_close(g, h)
