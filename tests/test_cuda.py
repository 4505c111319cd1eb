"""The CUDA path: every method's training step under AMP, channels-last, a compiled teacher, graft → bake →
``torch.export``, fixture parity in float32, exact resume with deterministic kernels, supervision on CUDA.

Skipped without CUDA. ``LETKD_TEST_DEVICE=cpu`` (or any device) runs them on that device instead, which
checks the tests themselves where no GPU is available.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from letkd.config import TrainConfig, load_config
from letkd.engine import build_optimizer
from letkd.graft import bake, graft
from letkd.layers import KDLayer
from letkd.methods import Distiller, MethodContext, get_method, list_methods
from letkd.models import create_model
from letkd.pipeline import train_from_config
from letkd.supervision import Codebook, SubclassCodebook, extract_rows
from letkd.template_loss import template_kl

ROOT = Path(__file__).resolve().parents[1]
FORCED = os.environ.get("LETKD_TEST_DEVICE", "").strip()
DEVICE = torch.device(FORCED or "cuda")
pytestmark = pytest.mark.skipif(not FORCED and not torch.cuda.is_available(), reason="needs CUDA")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (exact-resume test)

NC, SIZE, K, SPC, LDA = 10, (3, 32, 32), 16, 2, 6  # digits-sized images, small supervision
NUM_TRAIN = 40  # training-set size for CRD's memory banks
FIXTURE_TOL = {"atol": 1e-4, "rtol": 1e-4}  # float32 on the device, TF32 off: the CPU tests' tolerance
CODEBOOK = {
    "kind": "codebook",
    "student_tap": "penultimate",
    "teacher_tap": "penultimate",
    "num_templates": K,
}
SUBCLASS = {"kind": "subclass", "student_tap": "intermediate", "teacher_tap": "intermediate",
            "subclasses_per_class": SPC, "lda_components": LDA}  # fmt: skip


@contextlib.contextmanager
def full_float32():
    """Plain float32 matrix products and convolutions (no TF32) for comparisons against references."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _codebook(dim: int = 64) -> Codebook:
    return Codebook(torch.rand(K, dim, generator=torch.Generator().manual_seed(1)) * 2)


def _subclass(dim: int = 64) -> SubclassCodebook:
    g = torch.Generator().manual_seed(2)
    s = NC * SPC
    scores = torch.softmax(torch.randn(s, s, generator=g), 1)
    return SubclassCodebook(torch.randn(dim, LDA, generator=g), torch.rand(dim, generator=g),
                            torch.randn(s, LDA, generator=g), scores, NC)  # fmt: skip


def method_cases() -> list[tuple[str, str, dict]]:
    """(label, registered method, params) for every registered method; letkd as letKD-1 and letKD-2."""
    special = {
        "quest": [("quest", {"layers": [dict(CODEBOOK, temperature=5.0)]})],
        "letkd": [("letkd1", {"layers": [CODEBOOK]}), ("letkd2", {"layers": [SUBCLASS, CODEBOOK]})],
        "dkd": [("dkd", {"warmup": 1}), ("dkd_ls", {"warmup": 1, "logit_stand": True})],
        "kd": [("kd", {}), ("kd_ls", {"logit_stand": True})],
        "reviewkd": [("reviewkd", {"warmup": 1})],
        "compose": [("at+kd", {"parts": [{"method": "at"}, {"method": "kd", "params": {"ce_weight": 0.0}}]})],
        "crd": [("crd", {"nce_k": 100})],  # more negatives than rows: repeated samples
        "crd_kd": [("crd_kd", {"nce_k": 100})],
    }
    return [
        (label, name, params) for name in list_methods() for label, params in special.get(name, [(name, {})])
    ]


def build(name: str, params: dict, compile_teacher: bool = False, seed: int = 0) -> Distiller:
    """The method around a resnet8 student and a resnet20 teacher (seeded), on :data:`DEVICE`."""
    torch.manual_seed(seed)
    student, teacher = create_model("resnet8", NC), create_model("resnet20", NC)
    layers = params.get("layers")
    supervision = (
        [_subclass() if layer["kind"] == "subclass" else _codebook() for layer in layers] if layers else None
    )
    context = MethodContext(
        NC, SIZE, supervision=supervision, compile_teacher=compile_teacher, num_train_samples=NUM_TRAIN
    )
    cls = get_method(name)
    distiller = cls.from_config(student, teacher if cls.requires_teacher else None, params, context)
    return distiller.to(DEVICE).train()


def batch(b: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *SIZE, generator=g).to(DEVICE), (torch.arange(b) % NC).to(DEVICE)


def make_step(distiller: Distiller, amp: str = "off"):
    """``step(images, labels) -> {loss: value}``: one step as the trainer takes it (autocast, summed losses,
    SGD, a GradScaler for fp16 kept across steps)."""
    optimizer = build_optimizer(list(distiller.trainable_parameters()), TrainConfig())
    scaler = torch.amp.GradScaler(DEVICE.type) if amp == "fp16" else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step(images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        extra = {}
        if distiller.needs_sample_indices:  # CRD: the sample indices and negatives a contrast dataset gives
            g = torch.Generator().manual_seed(len(labels))
            index = torch.randperm(NUM_TRAIN, generator=g)[: len(labels)]
            negatives = torch.randint(0, NUM_TRAIN, (len(labels), distiller.num_negatives), generator=g)
            contrast = torch.cat([index[:, None], negatives], 1)
            extra = {"index": index.to(DEVICE), "contrast_index": contrast.to(DEVICE)}
        with torch.autocast(DEVICE.type, dtype=dtype) if dtype else contextlib.nullcontext():
            _, losses = distiller.forward_train(images, labels, **extra)
        total = torch.stack([v.float() for v in losses.values()]).sum()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        return {k: v.item() for k, v in losses.items()}

    return step


CASES = method_cases()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("label,name,params", CASES, ids=[c[0] for c in CASES])
def test_one_amp_step_of_every_method(label, name, params, amp):
    distiller = build(name, params)
    teacher_before = (
        [p.clone() for p in distiller.teacher.parameters()] if distiller.teacher is not None else []
    )
    student_before = [p.detach().clone() for p in distiller.student.parameters()]
    step = make_step(distiller, amp)
    for seed in (0, 1):  # two steps: state kept between steps (reused buffers, scaler) must fit the dtype
        losses = step(*batch(seed=seed))
        assert losses and all(math.isfinite(v) for v in losses.values()), losses
    moved = [not torch.equal(a, b) for a, b in zip(student_before, distiller.student.parameters())]
    # fp16: the GradScaler skips steps (and halves its scale) while the scaled gradients overflow
    for _ in range(20 if amp == "fp16" else 0):
        if any(moved):
            break
        losses = step(*batch())
        assert all(math.isfinite(v) for v in losses.values()), losses
        moved = [not torch.equal(a, b) for a, b in zip(student_before, distiller.student.parameters())]
    assert any(moved), "the student did not learn"
    if distiller.teacher is not None:
        assert all(torch.equal(a, b) for a, b in zip(teacher_before, distiller.teacher.parameters()))


@pytest.mark.parametrize("label", ["vanilla", "kd", "letkd2"])
def test_channels_last_student_and_teacher_give_the_same_losses(label):
    _, name, params = next(c for c in CASES if c[0] == label)
    images, labels = batch()
    with full_float32():
        plain = build(name, params)
        expected = {k: v.item() for k, v in plain.forward_train(images, labels)[1].items()}
        fast = build(name, params).to(memory_format=torch.channels_last)
        conv = next(m for m in fast.student.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        got = make_step(fast)(images.contiguous(memory_format=torch.channels_last), labels)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize("label", ["kd", "letkd1"])
def test_compiled_teacher_gives_the_eager_losses(label):
    _, name, params = next(c for c in CASES if c[0] == label)
    images, labels = batch()
    with full_float32():
        eager = {k: v.item() for k, v in build(name, params).forward_train(images, labels)[1].items()}
        compiled = build(name, params, compile_teacher=True)
        got = make_step(compiled)(images, labels)
        again = {k: v.item() for k, v in compiled.forward_train(*batch(seed=1))[1].items()}  # after a step
    for key in eager:
        assert got[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-4), key
    assert all(math.isfinite(v) for v in again.values())


def test_graft_bake_export_matches_the_grafted_model():
    torch.manual_seed(3)
    model = create_model("resnet8", NC)
    graft(model, "intermediate", KDLayer(64, 12))
    graft(model, "penultimate", KDLayer(64, 20, alpha=0.5))
    model.to(DEVICE).train()
    with torch.no_grad():
        model(batch(16)[0])  # non-trivial BatchNorm statistics
    model.eval()
    baked = bake(model)
    images = batch(5, seed=4)[0]
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    with full_float32(), torch.no_grad():
        program = torch.export.export(baked, (batch(4)[0],), dynamic_shapes=({0: batch_dim},))
        expected = model(images)
        torch.testing.assert_close(baked(images), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(program.module()(images), expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(expected, create_model("resnet8", NC).to(DEVICE).eval()(images))


# ------------------------------------------------------------------------------------------ fixtures


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array)).to(DEVICE)


def _kd_layer(ref: dict, prefix: str, layer_prefix: str, alpha: float) -> KDLayer:
    layer = KDLayer(
        ref[f"{prefix}/student_features"].shape[1], ref[f"{prefix}/template_weight"].shape[0], alpha
    )
    names = {"templates.weight": f"{prefix}/template_weight", "templates.scale": f"{prefix}/template_scale"}
    names |= {f"bn.{k}": f"{layer_prefix}/bn_{k}" for k in ("weight", "bias", "running_mean", "running_var")}
    names |= {"values.weight": f"{layer_prefix}/value_weight", "values.scale": f"{layer_prefix}/value_scale"}
    state = {key: torch.from_numpy(np.asarray(ref[src])) for key, src in names.items()}
    layer.load_state_dict(state | {"bn.num_batches_tracked": torch.tensor(0)}, strict=True)
    return layer.to(DEVICE)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_kd_layer_and_template_kl_match_the_fixtures(layer_ref, mode):
    with full_float32():
        for alpha in (1.0, 0.5):
            layer = _kd_layer(layer_ref, "pen", f"pen_a{alpha}", alpha).train(mode == "train")
            x_hat, scores = layer(_t(layer_ref["pen/student_features"]))
            assert x_hat.device.type == DEVICE.type
            torch.testing.assert_close(scores, _t(layer_ref["pen/scores"]), **FIXTURE_TOL)
            torch.testing.assert_close(x_hat, _t(layer_ref[f"pen_a{alpha}/out_{mode}"]), **FIXTURE_TOL)
        targets = _t(layer_ref["pen/teacher_targets_BHWK"]).permute(0, 3, 1, 2)
        kl = template_kl(scores, targets).double()
        torch.testing.assert_close(kl, _t(layer_ref["pen/kl_loss"]).double(), **FIXTURE_TOL)
        inter = _kd_layer(layer_ref, "int", "int", 1.0).eval()
        x_hat, scores = inter(_t(layer_ref["int/student_features"]))
        torch.testing.assert_close(x_hat, _t(layer_ref["int/out_eval"]), **FIXTURE_TOL)
        b, k, h, w = scores.shape
        targets = _t(layer_ref["int/teacher_targets_BHW_x_S"]).reshape(b, h, w, k).permute(0, 3, 1, 2)
        kl = template_kl(scores, targets).double()
        torch.testing.assert_close(kl, _t(layer_ref["int/kl_loss"]).double(), **FIXTURE_TOL)


def test_codebook_and_subclass_targets_match_the_fixtures(layer_ref):
    with full_float32():
        codebook = Codebook(layer_ref["pen/centroids"], float(layer_ref["pen/temperature"])).to(DEVICE)
        out = codebook(_t(layer_ref["pen/teacher_features"]))
        assert out.device.type == DEVICE.type
        expected = _t(layer_ref["pen/teacher_targets_BHWK"]).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, expected, **FIXTURE_TOL)
        keys = ("int/lda_scalings", "int/lda_xbar", "int/subclass_centers", "int/score_matrix")
        sub = SubclassCodebook(*(layer_ref[k] for k in keys), num_classes=int(layer_ref["int/num_classes"]))
        out = sub.to(DEVICE)(_t(layer_ref["int/teacher_features"]), _t(layer_ref["int/labels"]))
        flat = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
        torch.testing.assert_close(flat, _t(layer_ref["int/teacher_targets_BHW_x_S"]), **FIXTURE_TOL)


# ------------------------------------------------------------------------------ engine and supervision


@pytest.mark.parametrize("on_device", [False, True])
def test_exact_resume_with_deterministic_algorithms(tmp_path, on_device):
    args = ["train.deterministic=true", "data.batch_size=32", "data.train_subset=256", "data.test_subset=64",
            f"data.on_device={str(on_device).lower()}", "train.progress=false", "train.tensorboard=false",
            "train.schedule.type=step", "train.schedule.milestones=[1]"]  # fmt: skip
    config = ROOT / "configs/digits/resnet8.yaml"
    whole = train_from_config(
        load_config(config, [*args, "train.epochs=2"]), tmp_path / "whole", device=DEVICE
    )
    train_from_config(load_config(config, [*args, "train.epochs=1"]), tmp_path / "split", device=DEVICE)
    resumed = train_from_config(
        load_config(config, [*args, "train.epochs=2"]), tmp_path / "split", True, DEVICE
    )
    assert whole["device"].startswith(DEVICE.type) and resumed["epochs_done"] == 2
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["train_loss"] for r in a["metrics"]] == [r["train_loss"] for r in b["metrics"]]
    assert whole["last_top1"] == resumed["last_top1"]


def test_supervision_extraction_and_targets_on_the_device(tmp_path):
    from letkd.data import create_dataset, subset

    data = subset(create_dataset("digits", "train", transform="test"), 40, seed=0)
    torch.manual_seed(5)
    teacher = create_model("resnet8", NC).eval()
    with full_float32():
        on_device = extract_rows(teacher, data, "penultimate", tmp_path / "dev", batch_size=16, device=DEVICE,
                                 progress=False)  # fmt: skip
        on_cpu = extract_rows(
            teacher.cpu(), data, "penultimate", tmp_path / "cpu", batch_size=16, progress=False
        )
    assert on_device.num_rows == on_cpu.num_rows == 40 * 8 * 8
    np.testing.assert_allclose(on_device.rows, on_cpu.rows, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(on_device.labels, on_cpu.labels)
    features = torch.from_numpy(np.array(on_cpu.rows[: 4 * 64])).reshape(4, 8, 8, 64).permute(0, 3, 1, 2)
    labels = torch.arange(4) % NC
    for module, args in ((_codebook(), (features,)), (_subclass(), (features, labels))):
        expected = module(*args)
        with full_float32():
            got = module.to(DEVICE)(*(a.to(DEVICE) for a in args))
        assert got.device.type == DEVICE.type
        torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.sum(1).cpu(), torch.ones(4, 8, 8))


def test_streaming_pass_and_kmeans_on_the_device(tmp_path):
    """Samples and class statistics gathered on the device equal the CPU's; the torch K-means on the device
    is within 1 % of faiss's objective on the same rows and seeds."""
    from letkd.data import create_dataset, subset
    from letkd.supervision.collect import RowRequest
    from letkd.supervision.kmeans import nearest_center, train_kmeans, train_kmeans_torch
    from letkd.supervision.stream import collect_rows
    from letkd.taps import resolve_tap

    data = subset(create_dataset("digits", "train", transform="test"), 200, seed=0)
    torch.manual_seed(5)
    teacher = create_model("resnet8", NC).eval()
    path = resolve_tap(teacher, "penultimate")

    def requests(folder: Path) -> list[RowRequest]:
        common = {"tap": "penultimate", "module_path": path, "pool2x2": False, "dtype": "float16", "seed": 1}
        return [RowRequest(folder=folder / "rows", keep="rows", cap=3000, **common),
                RowRequest(folder=folder / "cls", keep="per_class", cap=100, num_classes=NC, stats=True,
                           **common)]  # fmt: skip

    with full_float32():
        on_device = collect_rows(teacher, data, requests(tmp_path / "dev"), 64, DEVICE, progress=False)
        on_cpu = collect_rows(teacher.cpu(), data, requests(tmp_path / "cpu"), 64, progress=False)
    for a, b in zip(on_device, on_cpu):
        np.testing.assert_array_equal(a.index, b.index)
        np.testing.assert_allclose(a.rows.astype(np.float32), b.rows.astype(np.float32), rtol=2e-3, atol=2e-3)
    within = on_device[1].scatter().within, on_cpu[1].scatter().within
    np.testing.assert_allclose(*within, rtol=1e-4, atol=1e-3)

    rng = np.random.default_rng(0)
    means = rng.normal(size=(200, 16)) * 1.5
    rows = (means[rng.integers(0, 200, 30000)] + rng.normal(size=(30000, 16))).astype(np.float32)
    ratios = []
    for seed in range(3):
        ref = nearest_center(rows, train_kmeans(rows, 64, iters=20, seed=seed))[1].mean()
        with full_float32():
            centers, _ = train_kmeans_torch(rows, 64, iters=20, seed=seed, device=DEVICE)
        ratios.append(nearest_center(rows, centers)[1].mean() / ref)
    assert max(ratios) < 1.01 and abs(np.mean(ratios) - 1) < 0.01, ratios
