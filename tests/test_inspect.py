"""``letkd inspect``: pictures and page of a digits letKD-2 run, maps checked against independently
recomputed student scores and teacher targets, QuEST heads, and the refusals (no KD layers, no artefact)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from matplotlib import image as mpimg

from letkd.cli import main as cli_main
from letkd.config import load_config
from letkd.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 4
FAST = [
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "data.batch_size=32",
    "data.train_subset=192",
    "data.test_subset=40",
    "train.progress=false",
    "train.tensorboard=false",
    "teacher.check_accuracy=false",
    "teacher.train_config=null",
    "supervision.kmeans_iters=5",
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder with a (random) resnet20 teacher checkpoint and the artefact cache of the runs below."""
    from letkd.models import create_model, save_weights

    folder = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(0)
    save_weights(create_model("resnet20", 10), folder / "teacher.pt")
    return folder


def _run(scratch: Path, config: str, name: str) -> Path:
    overrides = FAST + [
        f"teacher.checkpoint={scratch / 'teacher.pt'}",
        f"supervision.cache_dir={scratch / 'art'}",
    ]
    cfg = load_config(ROOT / "configs" / "digits" / config, overrides)
    summary = run_pipeline(cfg, run_dir=scratch / name)
    assert summary["status"] == "completed"
    return scratch / name


@pytest.fixture(scope="module")
def letkd2_run(scratch) -> Path:
    return _run(scratch, "letkd2.yaml", "letkd2")


@pytest.fixture(scope="module")
def inspected(letkd2_run) -> Path:
    """``letkd inspect`` on the letKD-2 run (usage/agreement over the pictured images only)."""
    args = ["inspect", str(letkd2_run), "--images", str(IMAGES), "--stats-images", "1", "--device", "cpu"]
    assert cli_main(args) == 0
    return letkd2_run / "inspect"


def _first_test_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from letkd.data import create_dataset

    test = create_dataset("digits", "test", transform="test")
    return torch.stack([test[i][0] for i in range(n)]), torch.tensor([int(test[i][1]) for i in range(n)])


def test_page_links_decodable_pictures_and_numbers(inspected):
    page = (inspected / "index.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    expected = {"agreement.png", "kl_per_epoch.png"} | {
        f"{what}_{layer}.png" for what in ("maps", "usage") for layer in ("intermediate", "penultimate")
    }
    assert set(links) == expected
    for link in links:
        assert not Path(link).is_absolute()
        picture = mpimg.imread(inspected / link)
        assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100, link
        assert picture[..., :3].std() > 0.01, f"{link} is blank"
    numbers = json.loads((inspected / "inspect.json").read_text())
    assert numbers["images"] == IMAGES and numbers["stats_images"] == IMAGES
    maps = np.load(inspected / "maps.npz")
    for layer in numbers["layers"]:
        name, k = layer["name"], layer["num_templates"]
        s_map, t_map = maps[f"{name}.student_argmax"], maps[f"{name}.teacher_argmax"]
        assert s_map.shape[0] == IMAGES and s_map.shape == t_map.shape
        # statistics over the same images: they must agree with the maps
        assert layer["agreement_top1"] == pytest.approx(float((s_map == t_map).mean()))
        assert layer["agreement_top1"] <= layer["agreement_top5"] <= 1.0
        np.testing.assert_array_equal(maps[f"{name}.usage_student"], np.bincount(s_map.ravel(), minlength=k))
        np.testing.assert_array_equal(maps[f"{name}.usage_teacher"], np.bincount(t_map.ravel(), minlength=k))
        assert f"| {name} | {layer['kind']} |" in page
    assert [n["num_templates"] for n in numbers["layers"]] == [20, 32]  # 10 classes × 2 sub-classes, K 32


def test_student_maps_are_the_argmax_of_the_grafted_layers_scores(letkd2_run, inspected):
    from letkd.deploy import apply_graft_spec
    from letkd.graft import graft_scores
    from letkd.models import create_model
    from letkd.taps import resolve_tap

    ckpt = torch.load(letkd2_run / "best.pt", weights_only=True)
    student = create_model(ckpt["meta"]["model_name"], ckpt["meta"]["num_classes"])
    apply_graft_spec(student, ckpt["meta"]["grafts"])
    student.load_state_dict(ckpt["model"], strict=True)
    images, _ = _first_test_images(IMAGES)
    with torch.no_grad():
        student.eval()(images)
    scores = graft_scores(student)
    maps = np.load(inspected / "maps.npz")
    for name in ("intermediate", "penultimate"):
        recomputed = scores[resolve_tap(student, name)].argmax(1).numpy()
        np.testing.assert_array_equal(maps[f"{name}.student_argmax"], recomputed)


def test_teacher_maps_are_the_argmax_of_the_supervision_targets(scratch, inspected):
    from letkd.models import create_model, load_weights
    from letkd.supervision import load_artifact
    from letkd.taps import resolve_tap

    teacher = create_model("resnet20", 10)
    load_weights(teacher, scratch / "teacher.pt")
    teacher.eval()
    images, labels = _first_test_images(IMAGES)
    maps = np.load(inspected / "maps.npz")
    for name, kind in (("intermediate", "subclass"), ("penultimate", "codebook")):
        (artefact,) = (scratch / "art").glob(f"{kind}-*.safetensors")
        supervision, _ = load_artifact(artefact)
        feats = {}
        module = teacher.get_submodule(resolve_tap(teacher, name))
        handle = module.register_forward_hook(lambda m, i, o, store=feats: store.update(out=o))
        with torch.no_grad():
            teacher(images)
            handle.remove()
            out = (
                supervision.targets(feats["out"], labels)
                if kind == "subclass"
                else supervision.targets(feats["out"])
            )
        np.testing.assert_array_equal(maps[f"{name}.teacher_argmax"], out.argmax(1).numpy())


def test_map_panels_show_the_labels_in_the_colour_table(inspected):
    numbers = json.loads((inspected / "inspect.json").read_text())
    maps = np.load(inspected / "maps.npz")
    for file, figure in numbers["figures"].items():
        name = figure["layer"]
        picture = mpimg.imread(inspected / file)[..., :3]
        colors = maps[f"{name}.colors"]
        checked = 0
        for panel in figure["panels"]:
            if panel["role"] == "image":
                continue
            labels = maps[f"{name}.{panel['role']}_argmax"][panel["image"]]
            x0, y0, x1, y1 = panel["bbox"]
            h, w = labels.shape
            for r in range(h):
                for c in range(w):
                    x = int(x0 + (c + 0.5) * (x1 - x0) / w)
                    y = int(y0 + (r + 0.5) * (y1 - y0) / h)
                    nearest = np.argmin(((colors - picture[y, x]) ** 2).sum(1))
                    assert nearest == labels[r, c], (file, panel, r, c)
                    checked += 1
        assert checked == 2 * IMAGES * labels.size


def test_quest_heads_are_inspected(scratch):
    from letkd.methods import MethodContext, get_method
    from letkd.methods.features import student_features
    from letkd.models import create_model

    run = _run(scratch, "quest.yaml", "quest")
    out = scratch / "quest-inspect"
    assert cli_main(["inspect", str(run), "--images", "2", "--out", str(out), "--device", "cpu"]) == 0
    maps = np.load(out / "maps.npz")
    # the method's own head on the method's own student features
    cfg = load_config(run / "config.yaml")
    ckpt = torch.load(run / "best.pt", weights_only=True)
    student = create_model("resnet8", 10)
    student.load_state_dict(ckpt["model"], strict=True)
    supervision = [load_artifact_module(scratch)]
    context = MethodContext(num_classes=10, input_size=(3, 32, 32), supervision=supervision)
    quest = get_method("quest").from_config(student, create_model("resnet20", 10), cfg.method.params, context)
    heads = {k.removeprefix("heads."): v for k, v in ckpt["distiller"].items() if k.startswith("heads.")}
    quest.heads.load_state_dict(heads, strict=True)
    images, _ = _first_test_images(2)
    with torch.no_grad():
        _, feats = student_features(quest.student.eval(), quest.student_paths, images)
        scores = quest.heads[0](feats[quest.student_paths[0]])
    np.testing.assert_array_equal(maps["penultimate.student_argmax"], scores.argmax(1).numpy())


def load_artifact_module(scratch: Path):
    from letkd.supervision import load_artifact

    (artefact,) = (scratch / "art").glob("codebook-*.safetensors")
    return load_artifact(artefact)[0]


def test_refuses_a_run_without_kd_layers(tmp_path, capsys):
    cfg = load_config(ROOT / "configs" / "digits" / "kd.yaml")
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert cli_main(["inspect", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert "needs a run with KD layers" in err and "'kd'" in err and "\n" not in err
    assert not (tmp_path / "inspect").exists()


def test_refuses_a_run_whose_artefact_is_not_cached(letkd2_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.pt", "summary.json", "metrics.jsonl"):
        shutil.copy(letkd2_run / name, run / name)
    config = yaml.safe_load((letkd2_run / "config.yaml").read_text())
    config["supervision"]["cache_dir"] = str(tmp_path / "empty-cache")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert cli_main(["inspect", str(run), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "no cached subclass artefact" in err and f"letkd fit {run / 'config.yaml'}" in err
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").rglob("*"))
    assert not (run / "inspect").exists()


def test_colorize_upsamples_by_nearest_cell():
    from letkd.inspection_plots import colorize, label_colors

    colors = label_colors(6)
    labels = np.arange(6).reshape(2, 3)
    rgb = colorize(labels, colors, (5, 7))
    assert rgb.shape == (5, 7, 3)
    rows, cols = np.arange(5) * 2 // 5, np.arange(7) * 3 // 7
    np.testing.assert_array_equal(rgb, colors[labels[rows][:, cols]])
    assert len({tuple(c) for c in label_colors(20)}) == 20
    assert label_colors(500).shape == (500, 3) and (label_colors(500) <= 1).all()
