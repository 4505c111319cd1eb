"""Baselines with learnable parts against the reference implementations' golden values
(``fixtures/baseline_methods_reference.npz``: RepDistiller's VID, CRD, AB, FSP, FitNet and SimKD): losses,
outputs, gradients, BatchNorm running statistics and (CRD) the memory update over two calls. Parameters are
loaded into our modules with ``strict=True`` under the reference's own keys; shapes and hyper-parameters are
read from the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from letkd.methods import crd
from letkd.methods.ab import ab_connector, ab_pair_loss, ab_pair_weights
from letkd.methods.crd import ContrastMemory, Embed
from letkd.methods.fitnet import HintRegressor
from letkd.methods.losses import contrast_loss, fsp_losses, fsp_matrices, match_grids, vid_loss
from letkd.methods.simkd import projector
from letkd.methods.vid import VIDRegressor


@pytest.fixture(scope="module")
def ref(fixtures_dir) -> dict[str, np.ndarray]:
    with np.load(fixtures_dir / "baseline_methods_reference.npz") as z:
        return {k: z[k] for k in z.files}


def _t(ref, key: str, grad: bool = False) -> torch.Tensor:
    return torch.from_numpy(ref[key].copy()).requires_grad_(grad)


def _close(actual, expected: np.ndarray, atol: float | None = None) -> None:
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    if np.issubdtype(expected.dtype, np.integer):
        np.testing.assert_array_equal(actual, expected)
        return
    tol = 1e-5 * np.abs(expected).max() if atol is None else atol
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=tol)


def _load(module: nn.Module, ref, prefix: str, strip: str = "") -> None:
    """Strictly load ``<prefix>param/<strip><key>`` entries as ``<key>``."""
    head = f"{prefix}param/{strip}"
    state = {k[len(head):]: torch.from_numpy(v.copy()) for k, v in ref.items() if k.startswith(head)}
    module.load_state_dict(state, strict=True)


def _check_grads(module: nn.Module, ref, prefix: str, strip: str = "", zero_bias: tuple[str, ...] = ()):
    keys = [k for k in ref if k.startswith(f"{prefix}grad/{strip}")]
    assert keys
    params = dict(module.named_parameters())
    for key in keys:
        name = key[len(f"{prefix}grad/{strip}"):]
        _close(params[name].grad, ref[key], atol=1e-6 if name in zero_bias else None)


def _check_after(module: nn.Module, ref, prefix: str, strip: str = "") -> None:
    keys = [k for k in ref if k.startswith(f"{prefix}after/{strip}")]
    assert keys
    state = module.state_dict()
    for key in keys:
        _close(state[key[len(f"{prefix}after/{strip}"):]], ref[key])


def test_vid(ref):
    s, t = _t(ref, "vid/feat_student", grad=True), _t(ref, "vid/feat_teacher")
    pred_var, eps = float(ref["vid/init_pred_var"]), float(ref["vid/eps"])
    module = VIDRegressor(s.shape[1], t.shape[1], t.shape[1], pred_var, eps)
    _close(module.log_scale, ref["vid/param/log_scale"])  # our initial value is the reference's
    _load(module, ref, "vid/")
    s_al, t_al = match_grids(s, t)
    mean = module(s_al)
    loss = vid_loss(mean, t_al, module.log_scale, eps)
    _close(mean, ref["vid/pred_mean"])
    _close(torch.nn.functional.softplus(module.log_scale) + eps, ref["vid/pred_var"])
    _close(loss, ref["vid/loss"])
    loss.backward()
    _close(s.grad, ref["vid/grad_feat_student"])
    _check_grads(module, ref, "vid/")


def _crd_step(embeds, memory, ref, prefix, n_data):
    fs = _t(ref, f"{prefix}feat_student", grad=True)
    e_s, e_t = embeds.embed_s(fs), embeds.embed_t(_t(ref, f"{prefix}feat_teacher"))
    out_s, out_t = memory(e_s, e_t, _t(ref, f"{prefix}idx"), _t(ref, f"{prefix}contrast_idx"))
    loss_s, loss_t = contrast_loss(out_s, n_data), contrast_loss(out_t, n_data)
    return fs, e_s, e_t, out_s, out_t, loss_s, loss_t


@pytest.fixture(params=["dense", "gathered"])
def crd_scoring(request, monkeypatch):
    """Both ways of scoring the sampled rows: one dense product and a pick, or gathered rows."""
    if request.param == "gathered":
        monkeypatch.setattr(crd, "DENSE_ROWS_PER_COLUMN", 0)
    return request.param


def test_crd_two_calls_with_memory_update(ref, crd_scoring):
    n_data, feat_dim = int(ref["crd/n_data"]), int(ref["crd/feat_dim"])
    assert ref["crd/contrast_idx"].shape[1] == int(ref["crd/nce_k"]) + 1
    embeds = nn.Module()
    embeds.embed_s = Embed(int(ref["crd/s_dim"]), feat_dim)
    embeds.embed_t = Embed(int(ref["crd/t_dim"]), feat_dim)
    _load(embeds, ref, "crd/")
    memory = ContrastMemory(feat_dim, n_data, float(ref["crd/nce_t"]), float(ref["crd/nce_m"]))
    memory.memory_v1.copy_(_t(ref, "crd/memory_v1_before"))
    memory.memory_v2.copy_(_t(ref, "crd/memory_v2_before"))
    fs, e_s, e_t, out_s, out_t, loss_s, loss_t = _crd_step(embeds, memory, ref, "crd/", n_data)
    _close(e_s, ref["crd/embed_s_out"])
    _close(e_t, ref["crd/embed_t_out"])
    _close(memory.z[0], ref["crd/Z_v1"])
    _close(memory.z[1], ref["crd/Z_v2"])
    _close(out_s, ref["crd/out_s"])
    _close(out_t, ref["crd/out_t"])
    _close(loss_s, ref["crd/loss_s"])
    _close(loss_t, ref["crd/loss_t"])
    _close(loss_s + loss_t, ref["crd/loss"])
    _close(memory.memory_v1, ref["crd/memory_v1_after"])
    _close(memory.memory_v2, ref["crd/memory_v2_after"])
    (loss_s + loss_t).backward()
    _close(fs.grad, ref["crd/grad_feat_student"])
    _check_grads(embeds, ref, "crd/")
    z_first = memory.z.clone()
    *_, out_s, out_t, loss_s, loss_t = _crd_step(embeds, memory, ref, "crd/step2/", n_data)
    assert torch.equal(memory.z, z_first)  # Z is computed once
    _close(out_s, ref["crd/step2/out_s"])
    _close(out_t, ref["crd/step2/out_t"])
    _close(loss_s + loss_t, ref["crd/step2/loss"])
    _close(memory.memory_v1, ref["crd/step2/memory_v1_after"])
    _close(memory.memory_v2, ref["crd/step2/memory_v2_after"])
    assert "z" in memory.state_dict()  # in checkpoints


def test_ab(ref):
    n = len([k for k in ref if k.startswith("ab/feat_student_")])
    students = [_t(ref, f"ab/feat_student_{i}", grad=True) for i in range(n)]
    teachers = [_t(ref, f"ab/feat_teacher_{i}") for i in range(n)]
    margin = float(ref["ab/margin"])
    shapes = [(tuple(s.shape[1:]), tuple(t.shape[1:])) for s, t in zip(students, teachers)]
    connectors = nn.ModuleList(ab_connector(*pair) or nn.Identity() for pair in shapes)
    _load(connectors, ref, "ab/", strip="connectors.")
    weights = ab_pair_weights(n)
    _close(np.array(weights), ref["ab/weights"])
    outs = [c(s) for c, s in zip(connectors, students)]
    losses = [w * ab_pair_loss(o, t, margin) for w, o, t in zip(weights, outs, teachers)]
    for i, out in enumerate(outs):
        _close(out, ref[f"ab/connector_out_{i}"])
    _close(torch.stack(losses), ref["ab/losses"])
    total = sum(losses)
    _close(total, ref["ab/loss"])
    total.backward()
    for i, s in enumerate(students):
        _close(s.grad, ref[f"ab/grad_feat_student_{i}"])
    biases = tuple(f"{i}.conv.bias" for i in range(n))
    _check_grads(connectors, ref, "ab/", strip="connectors.", zero_bias=biases)
    _check_after(connectors, ref, "ab/", strip="connectors.")


def test_ab_margin_loss_regions():
    """Re-derived by cases: teacher off pushes the student below −m, teacher on pushes it above +m."""
    from letkd.methods.losses import ab_loss

    s = torch.tensor([-2.0, -0.5, 0.5, 2.0, -2.0, -0.5, 0.5, 2.0])
    t = torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    expected = 0 + 0.5**2 + 1.5**2 + 3.0**2 + 3.0**2 + 1.5**2 + 0.5**2 + 0
    assert ab_loss(s, t, 1.0).item() == pytest.approx(expected)


def test_fsp(ref):
    n = len([k for k in ref if k.startswith("fsp/feat_student_")])
    students = [_t(ref, f"fsp/feat_student_{i}", grad=True) for i in range(n)]
    teachers = [_t(ref, f"fsp/feat_teacher_{i}") for i in range(n)]
    for i, (g_s, g_t) in enumerate(zip(fsp_matrices(students), fsp_matrices(teachers))):
        _close(g_s, ref[f"fsp/fsp_student_{i}"])
        _close(g_t, ref[f"fsp/fsp_teacher_{i}"])
    losses = fsp_losses(students, teachers)
    _close(torch.stack(losses), ref["fsp/losses"])
    total = torch.stack(losses).sum()
    _close(total, ref["fsp/loss"])
    total.backward()
    for i, s in enumerate(students):
        _close(s.grad, ref[f"fsp/grad_feat_student_{i}"])


def test_fitnet(ref):
    s, t = _t(ref, "fitnet/feat_student", grad=True), _t(ref, "fitnet/feat_teacher")
    regressor = HintRegressor(tuple(s.shape[1:]), tuple(t.shape[1:]))
    _load(regressor, ref, "fitnet/")
    out = regressor(s)
    loss = torch.nn.functional.mse_loss(out, t)
    _close(out, ref["fitnet/output"])
    _close(loss, ref["fitnet/loss"])
    loss.backward()
    _close(s.grad, ref["fitnet/grad_feat_student"])
    _check_grads(regressor, ref, "fitnet/", zero_bias=("conv.bias",))
    _check_after(regressor, ref, "fitnet/")


def _simkd_modules(ref):
    s, t = ref["simkd/feat_student"], ref["simkd/feat_teacher"]
    head = nn.Module()
    head.transfer = projector(s.shape[1], t.shape[1], int(ref["simkd/factor"]))
    _load(head, ref, "simkd/")
    cls_t = nn.Linear(*ref["simkd/cls_t/weight"].shape[::-1])
    cls_t.load_state_dict({"weight": _t(ref, "simkd/cls_t/weight"), "bias": _t(ref, "simkd/cls_t/bias")})
    return head, cls_t.requires_grad_(False)


def test_simkd(ref):
    head, cls_t = _simkd_modules(ref)
    s, t = _t(ref, "simkd/feat_student", grad=True), _t(ref, "simkd/feat_teacher")
    projected = head.transfer(s)
    logits = cls_t(projected.mean((2, 3)))
    loss = torch.nn.functional.mse_loss(projected, t)
    _close(projected, ref["simkd/projected"])
    _close(logits, ref["simkd/logits"])
    _close(loss, ref["simkd/loss"])
    loss.backward()
    _close(s.grad, ref["simkd/grad_feat_student"])
    _check_grads(head, ref, "simkd/")
    _check_after(head, ref, "simkd/")
    head, cls_t = _simkd_modules(ref)
    head.eval()
    with torch.no_grad():
        projected = head.transfer(_t(ref, "simkd/feat_student"))
        _close(projected, ref["simkd/projected_eval"])
        _close(cls_t(projected.mean((2, 3))), ref["simkd/logits_eval"])


def test_simkd_checkpoints_are_not_exported_as_the_bare_student(tmp_path):
    from letkd.checkpoints import save_checkpoint
    from letkd.config import ConfigError
    from letkd.deploy import load_student

    meta = {"method": "simkd", "model_name": "resnet8", "num_classes": 10, "standalone_student": False}
    save_checkpoint({"model": create_student_state(), "meta": meta}, tmp_path / "simkd.pt")
    with pytest.raises(ConfigError, match="'simkd' run deploys more than its student"):
        load_student(tmp_path / "simkd.pt")
    meta = dict(meta, method="vid", standalone_student=True)
    save_checkpoint({"model": create_student_state(), "meta": meta}, tmp_path / "vid.pt")
    model, _ = load_student(tmp_path / "vid.pt")
    assert not model.training


def create_student_state() -> dict[str, torch.Tensor]:
    from letkd.models import create_model

    return create_model("resnet8", 10).state_dict()
