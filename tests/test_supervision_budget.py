"""Disk and memory of a supervision fit: checked before the teacher pass; the ImageNet caps meet the goal."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from letkd.build import supervision_specs
from letkd.cli import main
from letkd.config import load_config
from letkd.models import create_model
from letkd.supervision import budget, rowcache
from letkd.supervision.budget import GB, folder_need
from letkd.supervision.rowcache import kmeans_training_rows, row_request
from letkd.taps import probe_shapes, resolve_tap

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    {"kind": "subclass", "student_tap": "layer3.0", "teacher_tap": "penultimate", "subclasses_per_class": 2,
     "lda_components": 5},
    {"kind": "codebook", "student_tap": "penultimate", "teacher_tap": "penultimate", "num_templates": 8},
]  # fmt: skip


def write_config(tmp_path: Path, **supervision) -> Path:
    cfg = {
        "seed": 3,
        "data": {"name": "digits", "train_subset": 200, "num_workers": 0},
        "model": {"name": "resnet8"},
        "teacher": {"name": "resnet8"},
        "method": {"name": "letkd", "params": {"layers": LAYERS}},
        "supervision": {"cache_dir": str(tmp_path / "cache"), "kmeans_iters": 3, **supervision},
        "train": {"device": "cpu"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def no_pass(*args, **kwargs):
    raise AssertionError("the teacher pass must not start")


@pytest.mark.parametrize("short", ["disk", "memory"])
def test_a_fit_that_does_not_fit_stops_before_the_teacher_pass(tmp_path, monkeypatch, capsys, short):
    monkeypatch.setattr(rowcache, "collect_rows", no_pass)
    if short == "disk":
        monkeypatch.setattr(budget, "free_disk_bytes", lambda folder: 300_000)  # a nearly full disk
    else:
        monkeypatch.setattr(budget, "available_ram_bytes", lambda: 1_000_000)
    assert main(["fit", str(write_config(tmp_path)), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: supervision needs "), err
    # no cap set: every row of the tap, 200 images x 8x8 locations x (64 float32 + a label) = 3.4 MB
    assert "every row of teacher tap 'penultimate' (12,800 x 64 float32)" in err[0]
    assert "set supervision.max_rows and supervision.rows_per_class" in err[0]
    if short == "disk":
        assert "needs 3.4 MB of disk in " in err[0] and "but 0.3 MB is free" in err[0]
    else:
        assert "of memory (beyond the teacher) but 1.0 MB is available" in err[0]
    assert not any((tmp_path / "cache").rglob("meta.json"))


def test_the_suggested_cap_fits(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rowcache, "collect_rows", no_pass)
    free = 1_000_000
    monkeypatch.setattr(budget, "free_disk_bytes", lambda folder: free)
    caps = {"max_rows": 5000, "rows_per_class": 1000, "sample_dtype": "float16"}
    assert main(["fit", str(write_config(tmp_path, **caps)), "--no-progress"]) == 1
    line = capsys.readouterr().err.strip()
    assert "the sample of 10,000 rows x 64 float16 of teacher tap 'penultimate'" in line, line
    assert "set supervision.rows_per_class to at most " in line
    caps["rows_per_class"] = int(line.split("to at most ")[1].split()[0])
    cfg = load_config(write_config(tmp_path, **caps))
    needs = [folder_need(row_request(s, "layer3", {}, cfg.supervision, 10), (64, 8, 8), 200, [s])
             for s in supervision_specs(cfg)]  # fmt: skip
    assert sum(n.disk for n in needs) <= free


def test_the_estimate_covers_what_the_pass_writes(tmp_path):
    config = write_config(tmp_path, max_rows=3000, rows_per_class=150)
    assert main(["fit", str(config), "--no-progress"]) == 0
    cfg = load_config(config)
    teacher = create_model("resnet8", 10)
    written = {p: sum(f.stat().st_size for f in p.iterdir()) for p in (tmp_path / "cache" / "rows").iterdir()}
    specs = supervision_specs(cfg)
    for spec in specs:
        fields = {}  # the folder name is not needed: match the written folders by their sizes
        request = row_request(spec, resolve_tap(teacher, spec.teacher_tap), fields, cfg.supervision, 10)
        need = folder_need(request, (64, 8, 8), 200, [spec])
        assert any(size <= need.disk <= 1.1 * size + 8192 for size in written.values()), (need, written)


@pytest.mark.parametrize("pair", ["resnet34_resnet18", "resnet50_mobilenet_v1"])
def test_imagenet_configs_meet_the_disk_and_memory_goal(pair):
    """letKD-2 (and letKD-1, QuEST) on ImageNet: <= 10 GB of disk, <= 16 GB of memory with the teacher."""
    teacher = None
    for method in ("letkd2", "letkd1", "quest"):
        cfg = load_config(ROOT / "configs" / "imagenet" / pair / f"{method}.yaml")
        sup = cfg.supervision
        assert sup.max_rows is not None and (method != "letkd2" or sup.rows_per_class is not None)
        teacher = teacher or create_model(cfg.teacher.name, 1000).eval().to("meta")  # shapes only, no compute
        specs = supervision_specs(cfg)
        paths = {s.teacher_tap: resolve_tap(teacher, s.teacher_tap) for s in specs}
        shapes = probe_shapes(teacher, list(paths.values()), (3, 224, 224))
        assert all(shape[1:] == (7, 7) for shape in shapes.values()), shapes
        needs = []
        for spec in specs:
            request = row_request(spec, paths[spec.teacher_tap], {"tap": spec.teacher_tap}, sup, 1000)
            shape = shapes[paths[spec.teacher_tap]]
            needs.append(folder_need(request, shape, 1_281_167, [spec], sup.extract_batch_size,
                                     kmeans_training_rows(specs, sup)))  # fmt: skip
        disk = sum(n.disk for n in needs)
        ram = max([sum(n.pass_ram for n in needs)] + [n.fit_ram for n in needs]) + 2 * GB  # + teacher, loader
        assert disk <= 10 * GB and ram <= 16 * GB, (pair, method, disk / GB, ram / GB)
        if method == "letkd2":
            assert disk > 5 * GB or "34" in pair  # the caps use the room they have
