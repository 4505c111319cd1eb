"""The supervision a method asks for, build_artifact with its cache, and the ``letkd fit`` command."""

from __future__ import annotations

import hashlib

import pytest
import torch
import yaml

from letkd.build import supervision_specs
from letkd.cli import main
from letkd.config import ConfigError, RunConfig, SupervisionConfig
from letkd.supervision import rowcache
from letkd.supervision.artifacts import build_artifact, kmeans_points_per_centroid, teacher_identity
from letkd.supervision.codebook import Codebook
from letkd.supervision.spec import CodebookSpec, SubclassSpec
from letkd.supervision.subclass import SubclassCodebook

LAYERS = [
    {
        "kind": "subclass",
        "student_tap": "layer3.0",
        "teacher_tap": "penultimate",
        "alpha": 1.0,
        "subclasses_per_class": 2,
        "lda_components": 5,
    },
    {
        "kind": "codebook",
        "student_tap": "penultimate",
        "teacher_tap": "penultimate",
        "temperature": 1.0,
        "weight": 1.0,
        "num_templates": 8,
    },
]


def _config(tmp_path, layers=LAYERS) -> dict:
    return {
        "seed": 3,
        "data": {"name": "digits"},
        "model": {"name": "resnet8"},
        "teacher": {"name": "resnet8"},
        "method": {"name": "letkd", "params": {"layers": layers}},
        "supervision": {"cache_dir": str(tmp_path / "cache"), "kmeans_iters": 3, "extract_batch_size": 512},
        "train": {"device": "cpu"},
    }


def test_the_method_says_which_supervision_it_needs():
    cfg = RunConfig.model_validate(
        {
            "method": {
                "name": "letkd",
                "params": {"layers": LAYERS + [{"kind": "codebook", "student_tap": "layer2",
                                                "teacher_tap": "layer3", "teacher_pool": True}]},
            }
        }
    )
    assert supervision_specs(cfg) == [
        SubclassSpec("penultimate", False, subclasses_per_class=2, lda_components=5),
        CodebookSpec("penultimate", False, num_templates=8),
        CodebookSpec("layer3", True, num_templates=4096),  # the method's default K
    ]
    quest = RunConfig.model_validate(
        {"method": {"name": "quest", "params": {"layers": [{"student_tap": "a", "teacher_tap": "b"}]}}}
    )
    assert supervision_specs(quest) == [CodebookSpec("b", False, 4096)]
    assert supervision_specs(RunConfig()) == []  # vanilla
    bad = RunConfig.model_validate({"method": {"name": "letkd", "params": {"layers": [{"kind": "pca"}]}}})
    with pytest.raises(ConfigError, match="layers.0"):
        supervision_specs(bad)


def test_teacher_identity_and_kmeans_cap(tmp_path):
    ckpt = tmp_path / "t.pth"
    ckpt.write_bytes(b"weights")
    assert teacher_identity("resnet56", ckpt, 0) == hashlib.sha256(b"weights").hexdigest()
    assert teacher_identity("resnet56", None, 4) == "untrained:resnet56:4"
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert teacher_identity("lin", None, 4, a).startswith("untrained:lin:4:")
    assert teacher_identity("lin", None, 4, a) == teacher_identity("lin", None, 4, a)
    assert teacher_identity("lin", None, 4, a) != teacher_identity("lin", None, 4, b)
    assert kmeans_points_per_centroid(1000, 10) == 100 and kmeans_points_per_centroid(1001, 10) == 101


def test_fit_command_then_build_reuses_the_cache(tmp_path, capsys, monkeypatch):
    cfg = _config(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and "fitted" in out[0] and "K=8" in out[1]
    assert "91968 rows x 64" in out[1]  # 1437 digits training images × 8×8 locations, 64 channels
    cache = tmp_path / "cache"
    assert len(list((cache / "rows").iterdir())) == 1, "both specs share one extraction of the tap"
    assert len(list(cache.glob("*.safetensors"))) == 2

    assert main(["fit", str(path), "--no-progress"]) == 0
    assert all("cached" in line for line in capsys.readouterr().out.strip().splitlines())

    def no_extraction(*args, **kwargs):
        raise AssertionError("a cached artefact must not extract rows")

    monkeypatch.setattr(rowcache, "collect_rows", no_extraction)
    from letkd.models import create_model
    from letkd.utils import seed_everything

    seed_everything(3)  # the same random teacher as the command's (seed 3)
    teacher = create_model("resnet8", 10).eval()
    sup_cfg = SupervisionConfig(**cfg["supervision"])
    codebook = build_artifact(
        CodebookSpec("penultimate", False, num_templates=8),
        teacher,
        "resnet8",
        None,
        "digits",
        None,
        sup_cfg,
        "cpu",
        10,
        teacher_seed=3,
    ).module
    subclass = build_artifact(
        SubclassSpec("layer3", False, subclasses_per_class=2, lda_components=5),
        teacher,
        "resnet8",
        None,
        "digits",
        None,
        sup_cfg,
        "cpu",
        10,
        teacher_seed=3,
    ).module
    assert isinstance(codebook, Codebook) and codebook.centers.shape == (8, 64)
    assert int(codebook.cluster_sizes.sum()) == 91968
    assert isinstance(subclass, SubclassCodebook) and subclass.centers.shape == (20, 5)
    torch.testing.assert_close(subclass.score_matrix.sum(1), torch.ones(20))
    feats = torch.rand(2, 64, 8, 8)
    assert subclass.targets(feats, torch.tensor([1, 9])).shape == (2, 20, 8, 8)
    with pytest.raises(AssertionError, match="must not extract"):  # another seed is another artefact
        build_artifact(
            CodebookSpec("penultimate", False, num_templates=8),
            teacher,
            "resnet8",
            None,
            "digits",
            None,
            sup_cfg,
            "cpu",
            10,
            teacher_seed=4,
        )


def test_fit_command_without_supervision(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**_config(tmp_path), "method": {"name": "kd"}}))
    assert main(["fit", str(path)]) == 0
    assert "needs no teacher supervision" in capsys.readouterr().out


def test_fit_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "method.params.layers" in text and "--device" in text and "supervision.max_rows" in text


def test_fit_command_reports_errors_without_traceback(tmp_path, capsys):
    layers = [{"kind": "codebook", "student_tap": "penultimate", "teacher_tap": "layer9", "num_templates": 4}]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, layers)))
    assert main(["fit", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "layer9" in err and "penultimate" in err  # names the valid taps
