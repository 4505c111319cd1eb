"""Paths inside a config are relative to the file that names them; paths in overrides to the working
directory; the loaded config holds them absolute, so it means the same from any folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from letkd.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory outside the repository."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_config_named_from_another_folder_finds_its_teacher_config(elsewhere):
    relative = os.path.relpath(ROOT / "configs/digits/kd.yaml", elsewhere)
    assert relative.startswith("..")
    cfg = load_config(relative)
    assert cfg.teacher.train_config == str(ROOT / "configs/digits/teacher.yaml")
    assert load_config(cfg.teacher.train_config).model.name == cfg.teacher.name  # what `letkd run` does next


def test_run_from_another_folder_reaches_the_teacher_stage(elsewhere, monkeypatch):
    """`letkd run ../configs/digits/kd.yaml` once stopped at `config file not found:
    ../configs/digits/configs/digits/teacher.yaml`; the teacher stage now loads the right file."""
    import torch

    from letkd import pipeline

    trained = []

    def fake_run(teacher_cfg, folder, *args, **kwargs):
        trained.append((teacher_cfg.name, Path(folder)))
        return {"status": "completed"}

    monkeypatch.setattr(pipeline, "_run", fake_run)
    cfg = load_config(os.path.relpath(ROOT / "configs/digits/kd.yaml"))
    checkpoint = pipeline.ensure_teacher_checkpoint(cfg, torch.device("cpu"))
    assert trained == [("digits-teacher", Path(checkpoint).parent)]


def test_paths_in_overrides_are_relative_to_the_working_directory(elsewhere):
    cfg = load_config(ROOT / "configs/digits/kd.yaml", ["teacher.checkpoint=ckpt/t.pt", "data.root=data"])
    assert cfg.teacher.checkpoint == str(elsewhere / "ckpt/t.pt")
    assert cfg.data.root == str(elsewhere / "data")
    home = load_config(ROOT / "configs/digits/kd.yaml", ["teacher.checkpoint=~/t.pt"])
    assert home.teacher.checkpoint == str(Path.home() / "t.pt")


def test_paths_in_a_file_are_relative_to_its_folder(elsewhere, tmp_path):
    folder = tmp_path / "exp" / "sub"
    folder.mkdir(parents=True)
    (elsewhere / "teacher.yaml").write_text("model: {name: resnet20}\n")  # same name where the user stands
    (folder / "teacher.yaml").write_text("model: {name: resnet8}\n")
    (folder / "kd.yaml").write_text(
        "teacher: {name: resnet8, train_config: teacher.yaml, checkpoint: ../w/t.pt}\n"
        "model: {name: resnet8, checkpoint: /abs/s.pt}\ndata: {name: digits, root: ../../data}\n"
    )
    cfg = load_config(folder / "kd.yaml")
    assert cfg.teacher.train_config == str(folder / "teacher.yaml")
    assert cfg.teacher.checkpoint == str(tmp_path / "exp" / "w" / "t.pt")
    assert cfg.data.root == str(tmp_path / "data")
    assert cfg.model.checkpoint == "/abs/s.pt"


@pytest.mark.parametrize("spec", ["crd:resnet56", "torchvision:IMAGENET1K_V1", "https://host/t.pth"])
def test_names_that_are_not_paths_are_left_alone(spec, elsewhere):
    cfg = load_config(ROOT / "configs/digits/kd.yaml", [f"teacher.checkpoint={spec}"])
    assert cfg.teacher.checkpoint == spec


def test_a_run_folders_config_runs_again_from_anywhere(elsewhere, tmp_path, monkeypatch):
    first = load_config(os.path.relpath(ROOT / "configs/digits/kd.yaml"), ["teacher.checkpoint=t.pt"])
    run_dir = tmp_path / "runs" / "kd"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(first.to_yaml())
    monkeypatch.chdir(tmp_path)
    again = load_config(run_dir / "config.yaml")
    assert again.teacher.checkpoint == first.teacher.checkpoint == str(elsewhere / "t.pt")
    assert again.teacher.train_config == first.teacher.train_config
    assert again.to_yaml() == first.to_yaml()


def test_a_path_written_for_the_working_directory_still_works_and_says_how(tmp_path, monkeypatch, capsys):
    (tmp_path / "configs" / "mine").mkdir(parents=True)
    (tmp_path / "configs" / "mine" / "teacher.yaml").write_text("model: {name: resnet8}\n")
    (tmp_path / "configs" / "mine" / "kd.yaml").write_text(
        "teacher: {name: resnet8, train_config: configs/mine/teacher.yaml}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/mine/kd.yaml")
    assert cfg.teacher.train_config == str(tmp_path / "configs/mine/teacher.yaml")
    assert "write 'teacher.yaml'" in capsys.readouterr().err


def test_shipped_configs_name_files_relative_to_themselves(elsewhere, capsys):
    missing = []
    for path in CONFIGS:
        teacher = load_config(path).teacher
        if teacher is not None and teacher.train_config and not Path(teacher.train_config).is_file():
            missing.append(f"{path}: {teacher.train_config}")
    assert not missing
    assert "warning" not in capsys.readouterr().err  # no path written for the working directory


def test_sweep_checks_resolve_paths_from_the_config(elsewhere):
    from letkd.sweep import build_grid

    grid = build_grid([os.path.relpath(ROOT / "configs/digits/kd.yaml")], [0, 1], elsewhere / "out", [])
    assert {run.teacher_key for run in grid} == {str(ROOT / "configs/digits/teacher.yaml")}
