"""Every shipped config loads, its method params validate, its models exist, and its taps fit together
(grids checked with one dummy image per model, tap and input size)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from letkd.config import load_config
from letkd.data import dataset_info
from letkd.methods import get_method
from letkd.methods.fitnet import HintRegressor
from letkd.models import create_model, feature_stages
from letkd.models.published import TEACHERS, is_published_name, published_teacher
from letkd.taps import feature_shape

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
IDS = [str(p.relative_to(ROOT / "configs")) for p in CONFIGS]

CIFAR_PAIRS = {
    # pair folder: (lr, heterogeneous, alpha_inter, alpha_pen)
    "wrn_40_2_wrn_16_2": (0.05, False, 1.0, 1.0),
    "wrn_40_2_wrn_40_1": (0.05, False, 1.0, 1.0),
    "resnet56_resnet20": (0.05, False, 1.0, 1.0),
    "resnet110_resnet20": (0.05, False, 1.0, 1.0),
    "resnet110_resnet32": (0.05, False, 1.0, 1.0),
    "resnet32x4_resnet8x4": (0.05, False, 1.0, 1.0),
    "wrn_40_2_ShuffleV1": (0.01, True, 1.0, 1.0),
    "resnet32x4_ShuffleV1": (0.01, True, 1.0, 1.0),
    "resnet32x4_ShuffleV2": (0.01, True, 1.0, 1.0),
    "ResNet50_MobileNetV2": (0.01, True, 0.2, 0.1),
}
CIFAR_METHODS = {"vanilla", "kd", "fitnet", "at", "sp", "dkd", "quest", "letkd1", "letkd2",
                 "vid", "ab", "fsp", "nst", "pkt", "rkd", "crd", "crd_kd", "simkd"}
# start-up refuses these (FSP: unequal stage widths): no config
CIFAR_REFUSED = {
    "ResNet50_MobileNetV2": {"fsp"},
    "resnet32x4_ShuffleV2": {"fsp"},
    "resnet32x4_ShuffleV1": {"fsp"},
    "wrn_40_2_ShuffleV1": {"fsp"},
    "wrn_40_2_wrn_40_1": {"fsp"},
}
#: pairs of letkd's own (not in the paper's tables): a CNN teacher into a vision transformer
OWN_PAIRS = {"resnet32x4_deit_tiny_p4": {"vanilla", "kd", "fitnet", "at", "letkd1", "letkd2"}}
TWO_STAGE = {"ab", "fsp"}  # 30 init epochs before RepDistiller's 240 (methods/init_stage.py)
# methods configured only for the pairs their authors (or mdistiller) report numbers for
FEATURE_REPORTED = {"wrn_40_2_wrn_40_1", "resnet56_resnet20", "resnet32x4_resnet8x4", "resnet32x4_ShuffleV1",
                    "resnet32x4_ShuffleV2", "ResNet50_MobileNetV2"}  # fmt: skip
LSKD_REPORTED = set(CIFAR_PAIRS) - {"wrn_40_2_ShuffleV1", "resnet32x4_ShuffleV1"}
CIFAR_REPORTED = {"reviewkd": FEATURE_REPORTED, "ofd": FEATURE_REPORTED, "dist": FEATURE_REPORTED,
                  "lskd": LSKD_REPORTED, "dkd_ls": LSKD_REPORTED}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    """Configs name other files (teacher.train_config) relative to the repository root."""
    monkeypatch.chdir(ROOT)


def _load(path: Path):
    return load_config(path)


@functools.cache
def _model(name: str, num_classes: int) -> torch.nn.Module:
    return create_model(name, num_classes).eval()


@functools.cache
def _shape(name: str, num_classes: int, tap: str, size: int) -> tuple[int, int, int]:
    return feature_shape(_model(name, num_classes), tap, (3, size, size))


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_loads_and_fits_together(path):
    cfg = _load(path)
    method = get_method(cfg.method.name)
    params = method.parse_params(cfg.method.params)
    info = dataset_info(cfg.data.name)
    nc = info.num_classes
    _model(cfg.model.name, nc)  # the student exists in the zoo
    if method.requires_teacher:
        assert cfg.teacher is not None, "a distillation config names its teacher"
    if cfg.teacher is None:
        return
    _model(cfg.teacher.name, nc)
    assert cfg.teacher.checkpoint or cfg.teacher.train_config
    if cfg.teacher.train_config:
        assert Path(cfg.teacher.train_config).is_file(), cfg.teacher.train_config
    # Every network here down-samples by a power of two up to 32: grids that match at 64 px match at 224.
    size = min(info.image_size, 64)
    for layer in getattr(params, "layers", []):
        s = _shape(cfg.model.name, nc, layer.student_tap, size)
        t = _shape(cfg.teacher.name, nc, layer.teacher_tap, size)
        if layer.teacher_pool:
            t = (t[0], t[1] // 2, t[2] // 2)
        assert s[1:] == t[1:], f"{layer.student_tap} {s} vs {layer.teacher_tap} {t}"
    if cfg.method.name == "fitnet":
        s = _shape(cfg.model.name, nc, params.student_tap, size)
        t = _shape(cfg.teacher.name, nc, params.teacher_tap, size)
        HintRegressor(s, t)  # raises when RepDistiller's ConvReg rules do not cover the grids
    if cfg.method.name == "fsp":
        taps = [(cfg.model.name, params.student_taps), (cfg.teacher.name, params.teacher_taps)]
        widths = [[_shape(m, nc, tap, size)[0] for tap in (t or ["stem", *feature_stages(_model(m, nc))])]
                  for m, t in taps]
        assert widths[0] == widths[1], f"FSP needs equal widths: {widths}"
    if cfg.method.name in ("at", "sp", "vid", "nst", "ab") and params.student_taps is None:
        n_s = len(feature_stages(_model(cfg.model.name, nc)))
        n_t = len(getattr(params, "teacher_taps", None) or feature_stages(_model(cfg.teacher.name, nc)))
        assert n_s == n_t, "stages pair up one to one"


def test_cifar100_has_every_pair_and_method():
    root = ROOT / "configs" / "cifar100"
    folders = {p.name for p in root.iterdir() if p.is_dir() and p.name != "teachers"}
    assert folders == set(CIFAR_PAIRS)  # the paper's pairs only: `configs/cifar100/*_*/*.yaml` is Table 1
    own = ROOT / "configs" / "cifar100_vit"
    assert {p.name for p in own.iterdir() if p.is_dir()} == set(OWN_PAIRS)
    for pair, methods in OWN_PAIRS.items():
        assert {p.stem for p in (own / pair).glob("*.yaml")} == methods
        assert all("NOT the paper's" in p.read_text() for p in (own / pair).glob("*.yaml"))
    for pair in CIFAR_PAIRS:
        expected = CIFAR_METHODS - CIFAR_REFUSED.get(pair, set())
        expected |= {method for method, pairs in CIFAR_REPORTED.items() if pair in pairs}
        assert {p.stem for p in (ROOT / "configs" / "cifar100" / pair).glob("*.yaml")} == expected


@pytest.mark.parametrize("pair", sorted(CIFAR_PAIRS))
def test_cifar100_configs_follow_the_paper(pair):
    lr, hetero, alpha_inter, alpha_pen = CIFAR_PAIRS[pair]
    folder = ROOT / "configs" / "cifar100" / pair
    for path in folder.glob("*.yaml"):
        cfg = _load(path)
        assert cfg.data.name == "cifar100" and (cfg.data.batch_size, cfg.data.test_batch_size) == (64, 100)
        tr = cfg.train
        init = cfg.method.params["init_epochs"] if cfg.method.name in TWO_STAGE else 0
        assert init in (0, 30)
        epochs = (tr.epochs, tr.lr, tr.momentum, tr.weight_decay)
        assert epochs == (240 + init, lr, 0.9, 5e-4)
        letkd_recipe = path.stem in ("letkd1", "letkd2", "quest")  # the others: baselines, from RepDistiller
        assert cfg.recipe == ("letkd" if letkd_recipe else "repdistiller") and tr.nesterov is letkd_recipe
        milestones = [150 + init, 180 + init, 210 + init]
        assert (tr.schedule.type, tr.schedule.milestones, tr.schedule.gamma) == ("step", milestones, 0.1)
        assert pair.endswith(f"_{cfg.model.name}")
        if cfg.teacher:
            assert pair == f"{cfg.teacher.name}_{cfg.model.name}"
            assert cfg.teacher.checkpoint == f"crd:{cfg.teacher.name}"  # the published teacher
    letkd1 = get_method("letkd").parse_params(_load(folder / "letkd1.yaml").method.params)
    letkd2 = get_method("letkd").parse_params(_load(folder / "letkd2.yaml").method.params)
    quest = get_method("quest").parse_params(_load(folder / "quest.yaml").method.params)
    (pen1,) = letkd1.layers
    inter, pen2 = letkd2.layers
    (qpen,) = quest.layers
    assert pen1 == pen2  # letKD-1 = letKD-2 minus the intermediate layer
    assert (pen1.kind, pen1.student_tap, pen1.teacher_tap) == ("codebook", "penultimate", "penultimate")
    assert (pen1.num_templates, pen1.temperature, pen1.alpha, pen1.weight) == (4096, 1.0, alpha_pen, 1.0)
    assert (inter.kind, inter.student_tap, inter.teacher_tap) == ("subclass", "intermediate", "intermediate")
    assert (inter.subclasses_per_class, inter.lda_components, inter.alpha) == (8, 60, alpha_inter)
    assert (qpen.num_templates, qpen.temperature, qpen.weight) == (4096, 5.0, 1.0)
    assert pen1.teacher_pool == inter.teacher_pool == qpen.teacher_pool == hetero
    dkd = get_method("dkd").parse_params(_load(folder / "dkd.yaml").method.params)
    assert (dkd.alpha, dkd.temperature, dkd.warmup) == (1.0, 4.0, 20)
    assert dkd.beta == {"resnet56_resnet20": 2.0, "resnet110_resnet32": 2.0, "resnet110_resnet20": 2.0,
                        "wrn_40_2_wrn_16_2": 6.0, "wrn_40_2_wrn_40_1": 6.0}.get(pair, 8.0)


# RepDistiller's feat[-2] of each CIFAR model (its forward(is_feat=True)): the map SimKD reads
FEAT_MINUS_2 = {
    "resnet20": ("layer3", 64), "resnet32": ("layer3", 64), "resnet56": ("layer3", 64),
    "resnet110": ("layer3", 64), "resnet8x4": ("layer3", 256), "resnet32x4": ("layer3", 256),
    "wrn_16_2": ("block3", 128), "wrn_40_1": ("block3", 64), "wrn_40_2": ("block3", 128),
    "ShuffleV1": ("layer3", 960), "ShuffleV2": ("layer3", 464), "MobileNetV2": ("blocks.6", 160),
    "ResNet50": ("layer4", 2048),
}  # fmt: skip


@pytest.mark.parametrize("pair", sorted(CIFAR_PAIRS))
def test_simkd_reads_repdistillers_feat_minus_2_of_both_networks(pair):
    from letkd.methods.features import default_stage_taps

    cfg = _load(ROOT / "configs" / "cifar100" / pair / "simkd.yaml")
    params = get_method("simkd").parse_params(cfg.method.params)
    for name, taps in ((cfg.model.name, params.student_taps), (cfg.teacher.name, params.teacher_taps)):
        model = _model(name, 100)
        (tap,) = taps or default_stage_taps(model, get_method("simkd").default_taps, "student")
        assert (tap, _shape(name, 100, tap, 32)[0]) == FEAT_MINUS_2[name], name


def test_cifar100_configs_name_published_teachers_of_the_table():
    distill = [p for p in (ROOT / "configs" / "cifar100").glob("*/*.yaml") if p.parent.name != "teachers"]
    named = set()
    for path in distill:
        cfg = _load(path)
        if cfg.teacher is None:
            continue
        teacher = published_teacher(cfg.teacher.checkpoint)  # raises for a name the table does not know
        assert is_published_name(cfg.teacher.checkpoint) and teacher.arch == cfg.teacher.name, path
        assert teacher.num_classes == dataset_info(cfg.data.name).num_classes
        named.add(teacher.arch)
    assert named == {"wrn_40_2", "resnet56", "resnet110", "resnet32x4", "ResNet50"}  # SPEC §7's teachers
    assert {p.stem for p in (ROOT / "configs" / "cifar100" / "teachers").glob("*.yaml")} == set(TEACHERS)


@pytest.mark.parametrize("dataset", ["tiny_imagenet", "imagenet"])
def test_larger_datasets_have_the_letkd_comparison_set(dataset):
    pairs = [p for p in (ROOT / "configs" / dataset).iterdir() if p.is_dir() and p.name != "teachers"]
    assert len(pairs) == {"tiny_imagenet": 5, "imagenet": 2}[dataset]
    for pair in pairs:
        assert {"vanilla", "kd", "quest", "letkd1", "letkd2"} <= {p.stem for p in pair.glob("*.yaml")}


def test_digits_has_a_quick_config_for_every_method():
    folder = ROOT / "configs" / "digits"
    stems = {p.stem for p in folder.glob("*.yaml")}
    assert CIFAR_METHODS | {"teacher"} <= stems
    for method in CIFAR_METHODS:
        cfg = _load(folder / f"{method}.yaml")
        assert cfg.data.name == "digits" and cfg.train.epochs <= 2  # the whole digits set is 1437 images
        if method in TWO_STAGE:
            assert cfg.method.params["init_epochs"] < cfg.train.epochs
        if cfg.teacher is not None:
            assert cfg.teacher.checkpoint is None
            assert Path(cfg.teacher.train_config).resolve() == (folder / "teacher.yaml").resolve()


def test_modern_baseline_configs_keep_their_authors_settings():
    folder = ROOT / "configs" / "cifar100"
    expected = {"reviewkd": ("reviewkd", {"ce_weight": 1.0, "warmup": 20}),
                "ofd": ("ofd", {"weight": 1e-3, "ce_weight": 1.0}),
                "dist": ("dist", {"beta": 2.0, "gamma": 2.0, "temperature": 4.0, "ce_weight": 1.0}),
                "lskd": ("kd", {"logit_stand": True, "ce_weight": 0.1}),
                "dkd_ls": ("dkd", {"logit_stand": True, "ce_weight": 1.0, "warmup": 20})}  # fmt: skip
    for stem, (method, settings) in expected.items():
        paths = sorted(folder.glob(f"*/{stem}.yaml")) + [ROOT / "configs" / "digits" / f"{stem}.yaml"] * (
            stem != "dkd_ls"
        )
        assert len(paths) == len(CIFAR_REPORTED[stem]) + (stem != "dkd_ls")
        for path in paths:
            cfg = _load(path)
            params = get_method(method).parse_params(cfg.method.params)
            assert cfg.method.name == method, path
            if cfg.data.name == "cifar100":
                assert {k: getattr(params, k) for k in settings} == settings, path
