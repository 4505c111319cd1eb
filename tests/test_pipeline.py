"""End-to-end: ``letkd run`` on every digits config (teacher trained once, supervision fitted and cached),
plus the run folder's contents, the letKD students' KD layers and their exported programs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from letkd.cli import main as cli_main
from letkd.config import load_config
from letkd.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
ZOO = ["vid", "ab", "fsp", "nst", "pkt", "rkd", "crd", "crd_kd", "simkd"]
MODERN = ["reviewkd", "ofd", "dist", "lskd"]
METHODS = ["vanilla", "kd", "fitnet", "at", "sp", "dkd", "quest", "letkd1", "letkd2", *ZOO, *MODERN]
CHANCE = 10.0  # digits has 10 balanced classes


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch folder with the digits configs, used as the working directory of the runs."""
    folder = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(ROOT / "configs" / "digits", folder / "configs" / "digits")
    old = os.getcwd()
    os.chdir(folder)
    yield folder
    os.chdir(old)


@pytest.fixture(scope="module")
def summaries(workdir):
    """Every digits method run once through the pipeline (the teacher is trained by the first one)."""
    out = {}
    for method in METHODS:
        cfg = load_config(f"configs/digits/{method}.yaml", ["train.progress=false"])
        out[method] = run_pipeline(cfg, run_dir=workdir / "runs" / method)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_every_method_completes_and_beats_chance(summaries, method):
    summary = summaries[method]
    assert summary["status"] == "completed"
    assert summary["epochs_done"] == 2
    assert summary["best_top1"] > 2 * CHANCE, summary
    run_dir = Path(summary["run_dir"])
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "best.pt", "last.pt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["best_top1"] == pytest.approx(max(r["test_top1"] for r in rows))
    if method != "vanilla":
        # the teacher's accuracy was measured before distilling and recorded with the run
        assert on_disk["teacher"] == "resnet20"
        assert on_disk["teacher_top1"] > 5 * CHANCE


def test_teacher_trained_once_and_supervision_cached(summaries, workdir):
    teachers = list((workdir / "runs" / "teachers").iterdir())
    assert len(teachers) == 1
    artefacts = sorted(p.name.split("-")[0] for p in (workdir / "artifacts").glob("*.safetensors"))
    # letkd1 and quest share the teacher tap and K but not the file name only if their fit differs: the
    # cache is keyed by what is fitted, so quest (K 32) and letkd1/letkd2 (K 32) share one codebook
    assert artefacts.count("subclass") == 1
    assert 1 <= artefacts.count("codebook") <= 2


@pytest.mark.parametrize("method,grafts", [("letkd1", 1), ("letkd2", 2)])
def test_letkd_students_carry_their_kd_layers(summaries, method, grafts):
    ckpt = torch.load(Path(summaries[method]["run_dir"]) / "best.pt", weights_only=True)
    kd_keys = [k for k in ckpt["model"] if ".letkd." in k]
    assert kd_keys, "the KD layers must be part of the student's state_dict"
    assert len(ckpt["meta"]["grafts"]) == grafts
    assert summaries[method]["extra_parameters"] == sum(
        ckpt["model"][k].numel()
        for k in kd_keys
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )


def test_exported_letkd_student_reproduces_the_trained_model(summaries, tmp_path):
    from letkd.deploy import apply_graft_spec
    from letkd.models import create_model

    ckpt_path = Path(summaries["letkd2"]["run_dir"]) / "best.pt"
    out = tmp_path / "student.pt2"
    assert cli_main(["export", str(ckpt_path), "--out", str(out)]) == 0
    program = torch.export.load(str(out))

    ckpt = torch.load(ckpt_path, weights_only=True)
    student = create_model(ckpt["meta"]["model_name"], ckpt["meta"]["num_classes"])
    apply_graft_spec(student, ckpt["meta"]["grafts"])
    student.load_state_dict(ckpt["model"], strict=True)
    student.eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = student(x)
    torch.testing.assert_close(program.module()(x), expected, atol=1e-5, rtol=1e-5)


def test_run_cli_reports_bad_override(workdir, capsys):
    code = cli_main(["run", "configs/digits/letkd1.yaml", "method.params.bogus=1"])
    assert code == 1
    assert "bogus" in capsys.readouterr().err


def test_run_cli_refuses_missing_teacher_checkpoint(workdir, capsys):
    code = cli_main(["run", "configs/digits/kd.yaml", "teacher.checkpoint=nope/ckpt.pth"])
    assert code == 1
    assert "teacher checkpoint not found" in capsys.readouterr().err



def test_simkd_run_keeps_its_head_and_refuses_a_bare_export(summaries, tmp_path, capsys):
    summary = summaries["simkd"]
    assert summary["extra_parameters"] > 0  # the projector
    ckpt = Path(summary["run_dir"]) / "best.pt"
    assert cli_main(["export", str(ckpt), "--out", str(tmp_path / "student.pt2")]) == 1
    assert "deploys more than its student" in capsys.readouterr().err
    assert not (tmp_path / "student.pt2").exists()
