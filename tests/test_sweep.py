"""``letkd sweep``: a 2-config × 2-seed digits sweep through submitit's debug executor, a second call that
skips every run, an interrupted run resumed by the local executor, validation errors, the sbatch script of
a SLURM submission (fake ``sbatch``/``srun``) and ``letkd report --layout pairs`` on the sweep folder."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import yaml

from letkd.cli import main as cli_main
from letkd.models import create_model, save_weights
from letkd.sweep import (
    ExecuteRun,
    SlurmOptions,
    SweepError,
    SweepRun,
    build_grid,
    prepare_dir,
    run_local,
    shared_workers,
    split_values,
    submit_slurm,
    update_manifest,
    waves,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/digits/vanilla.yaml", "configs/digits/kd.yaml"]
TINY = ["train.epochs=1", "data.train_subset=64", "data.test_subset=40", "data.num_workers=0",
        "train.progress=false"]  # fmt: skip
FILES = ("summary.json", "best.pt", "last.pt", "metrics.jsonl")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch working directory with the digits configs; the teacher trains 1 epoch on 128 images."""
    folder = tmp_path_factory.mktemp("sweep")
    shutil.copytree(ROOT / "configs" / "digits", folder / "configs" / "digits")
    teacher = folder / "configs" / "digits" / "teacher.yaml"
    data = yaml.safe_load(teacher.read_text())
    data["train"]["epochs"] = 1
    data["data"].update(train_subset=128, test_subset=40, num_workers=0)
    teacher.write_text(yaml.safe_dump(data))
    old = os.getcwd()
    os.chdir(folder)
    yield folder
    os.chdir(old)


def _mtimes(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/seed*/*") if p.name in FILES}


@pytest.fixture(scope="module")
def sweep(workdir):
    """The 2 × 2 sweep run once through submitit's debug executor; returns (folder, printed lines)."""
    out = workdir / "sweeps" / "digits"
    grid = build_grid(CONFIGS, [0, 1], out, TINY)
    prepare_dir(out)
    lines: list[str] = []
    jobs = submit_slurm(grid, out, SlurmOptions(), cluster="debug", echo=lines.append)
    assert len(jobs) == 4
    return out, lines


@pytest.mark.slow
def test_debug_executor_runs_the_grid(sweep):
    out, lines = sweep
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/seed*")) == [
        "digits-kd/seed0", "digits-kd/seed1", "digits-vanilla/seed0", "digits-vanilla/seed1",
    ]  # fmt: skip
    for folder in out.glob("*/seed*"):
        summary = json.loads((folder / "summary.json").read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert summary["status"] == "completed" and summary["epochs_done"] == 1
        assert config["seed"] == int(folder.name.removeprefix("seed"))
        assert config["data"]["train_subset"] == 64
    assert sum(l.startswith("submit ") and "stdout" in l and "stderr" in l for l in lines) == 4
    done = [l for l in lines if l.startswith("done ")]
    assert len(done) == 4 and all("completed, best top-1" in l for l in done)


@pytest.mark.slow
def test_second_call_skips_finished_runs(sweep, capsys):
    out, _ = sweep
    before = _mtimes(out)
    assert len(before) == 4 * len(FILES)
    lines: list[str] = []
    grid = build_grid(CONFIGS, [0, 1], out, TINY)
    assert submit_slurm(grid, out, SlurmOptions(), cluster="debug", echo=lines.append) == []
    assert len(lines) == 4 and all(l.startswith("skip ") and "completed" in l for l in lines)
    assert cli_main(["sweep", *CONFIGS, "--seeds", "2", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skip ") == 4 and "0 completed, 4 skipped, 0 failed" in printed
    assert _mtimes(out) == before  # nothing trained again
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["seeds"] == [0, 1] and len(manifest["runs"]) == 4
    assert {r["folder"] for r in manifest["runs"]} == {f"digits-{m}/seed{s}" for m in ("vanilla", "kd")
                                                       for s in (0, 1)}  # fmt: skip


@pytest.mark.slow
def test_local_executor_resumes_an_interrupted_run(sweep, tmp_path, capsys):
    """A folder with last.pt but no completed summary continues from its checkpoint (epoch 0 is kept), here
    to two epochs: the learning rate of the epoch trained (a cosine schedule's first) is the same under both
    numbers of epochs, so continuing it gives the two-epoch run asked for."""
    out = tmp_path / "copy"
    shutil.copytree(sweep[0], out)
    folder = out / "digits-kd" / "seed1"
    first_epoch = (folder / "metrics.jsonl").read_text().splitlines()[0]
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    others = {k: v for k, v in _mtimes(out).items() if not k.startswith("digits-kd/seed1")}
    # two epochs now: the interrupted run trains its second epoch only
    args = ["sweep", CONFIGS[1], "--seed-list", "1", "--out", str(out), *TINY, "train.epochs=2"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "start  digits-kd seed1 (resuming)" in printed
    assert "done   digits-kd seed1: completed" in printed
    rows = (folder / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and rows[0] == first_epoch
    assert json.loads((folder / "summary.json").read_text())["epochs_done"] == 2
    assert "resuming from" in (out / "logs" / "digits-kd-seed1.log").read_text()
    assert {k: v for k, v in _mtimes(out).items() if not k.startswith("digits-kd/seed1")} == others


@pytest.mark.slow
def test_report_pairs_on_the_sweep_folder(sweep, tmp_path, capsys):
    out, _ = sweep
    assert cli_main(["report", str(out), "--layout", "pairs", "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "| method | RN20→resnet8 | paper | Δ |" in printed
    student = next(l for l in printed.splitlines() if l.startswith("| Student |"))
    kd = next(l for l in printed.splitlines() if l.startswith("| KD |"))
    assert "(n=2)" in student and "(n=2)" in kd
    assert (tmp_path / "r" / "pairs.md").is_file() and (tmp_path / "r" / "pairs.csv").is_file()


def test_runs_that_train_the_teacher_go_first(workdir, tmp_path):
    grid = build_grid(CONFIGS + ["configs/digits/letkd1.yaml"], [0, 1], tmp_path, TINY)
    first, later = waves(grid)
    assert [r.title for r in first] == ["digits-vanilla seed0", "digits-vanilla seed1", "digits-kd seed0"]
    assert [r.title for r in later] == ["digits-kd seed1", "digits-letkd1 seed0", "digits-letkd1 seed1"]
    save_weights(create_model("resnet20", 10), tmp_path / "t.pt")
    given = [f"teacher.checkpoint={tmp_path / 't.pt'}"]
    pinned = build_grid(["configs/digits/kd.yaml"], [0, 1], tmp_path, given)
    assert len(waves(pinned)) == 1  # a given teacher checkpoint: all in parallel


def test_local_executor_packs_runs_per_gpu(tmp_path, monkeypatch):
    """GPUs 0 and 1 emulated as slots, 2 runs per GPU: four runs at once, two pinned to each GPU, each with
    half of the data-loader workers of one run."""
    script = (
        "import json, os, sys, time; out = sys.argv[1]; os.makedirs(out, exist_ok=True); start = time.time();"
        "time.sleep(1.5); json.dump({'status': 'completed', 'best_top1': 50.0, 'last_top1': 40.0,"
        " 'gpu': os.environ['CUDA_VISIBLE_DEVICES'], 'start': start, 'end': time.time(),"
        " 'extra': sys.argv[2:]},"
        " open(out + '/summary.json', 'w'))"
    )
    monkeypatch.setattr(SweepRun, "command",
                        lambda self, resume, extra: [sys.executable, "-c", script, self.folder,
                                                     *extra])  # fmt: skip
    grid = [SweepRun(config="c.yaml", name="c", seed=s, folder=str(tmp_path / "c" / f"seed{s}"),
                     overrides=(), cwd=str(tmp_path), workers=4) for s in range(4)]  # fmt: skip
    (tmp_path / "logs").mkdir()
    lines: list[str] = []
    counts = run_local(grid, gpus=["0", "1"], echo=lines.append, runs_per_gpu=2)
    assert counts == {"completed": 4, "skipped": 0, "failed": 0, "not started": 0}
    summaries = [json.loads(Path(r.folder, "summary.json").read_text()) for r in grid]
    assert sorted(s["gpu"] for s in summaries) == ["0", "0", "1", "1"]
    assert max(s["start"] for s in summaries) < min(s["end"] for s in summaries)  # all four at once
    assert all(s["extra"] == ["data.num_workers=2"] for s in summaries)  # 4 workers shared by 2 runs
    assert sum("on GPU 0" in l for l in lines) == 2 and sum("on GPU 1" in l for l in lines) == 2
    assert all("best top-1 50.00%, last top-1 40.00%" in l for l in lines if l.startswith("done"))
    assert shared_workers(None, 1) == () and shared_workers(0, 3) == ("data.num_workers=0",)
    assert shared_workers(3, 2) == ("data.num_workers=1",)


def test_failed_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch):
    """Every way a run can fail is a FAILED line with its cause (never a dead worker), and the others run:
    a letkd error (its one line and the log), a log that cannot be written, anything unexpected."""
    fails = ("import sys; print('epoch 1/2 ...'); print('error: unknown model', repr('x'), file=sys.stderr);"
             "sys.exit(3)")
    ok = ("import json, os, sys; os.makedirs(sys.argv[1], exist_ok=True);"
          "json.dump({'status': 'completed'}, open(sys.argv[1] + '/summary.json', 'w'))")
    scripts = {0: [fails], 1: [ok], 2: [ok], 3: [ok]}
    monkeypatch.setattr(SweepRun, "command",
                        lambda self, resume, extra: [sys.executable, "-c", *scripts[self.seed],
                                                     self.folder])  # fmt: skip
    real_call = ExecuteRun.__call__

    def call(self):
        if self.run.seed == 3:
            raise ValueError("something unexpected")
        return real_call(self)

    monkeypatch.setattr(ExecuteRun, "__call__", call)
    grid = [SweepRun(config="c.yaml", name="c", seed=s, folder=str(tmp_path / "c" / f"seed{s}"),
                     overrides=(), cwd=str(tmp_path), sweep_dir=str(tmp_path)) for s in range(4)]  # fmt: skip
    (tmp_path / "logs" / "c-seed1.log").mkdir(parents=True)  # the log of seed 1 cannot be written
    lines: list[str] = []
    counts = run_local(grid, gpus=[], echo=lines.append)
    assert counts == {"completed": 1, "skipped": 0, "failed": 3, "not started": 0}
    failed = {int(l.split()[2].removeprefix("seed").rstrip(":")): l for l in lines if l.startswith("FAILED")}
    assert "FAILED c seed0: unknown model 'x' (exit status 3); log: " in failed[0]
    assert str(tmp_path / "logs" / "c-seed0.log") in failed[0]
    assert "cannot write its log: Is a directory: " in failed[1]
    assert failed[3].startswith("FAILED c seed3: something unexpected")
    assert any(l.startswith("done   c seed2: completed") for l in lines)


def test_slurm_submission_writes_the_sbatch_options(tmp_path, monkeypatch):
    """A fake sbatch records the scripts: array with parallelism, resources, extra options, and the runs that
    reuse a teacher trained by the first one depend on it."""
    bin_dir, record = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\nn=$(ls {record} | wc -l)\ncp "$1" {record}/script$n.sh\n'
        'echo "Submitted batch job $((700 + n))"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    grid = [SweepRun(config="c.yaml", name="c", seed=s, folder=str(tmp_path / "out" / "c" / f"seed{s}"),
                     overrides=(f"seed={s}",), cwd=str(tmp_path), teacher_key="t.yaml")
            for s in range(3)]  # fmt: skip
    options = SlurmOptions(partition="gpu", time_min=720, gpus_per_job=2, cpus_per_job=8, mem_gb=32,
                           array_parallelism=2, sbatch={"account": "abc"})  # fmt: skip
    lines: list[str] = []
    jobs = submit_slurm(grid, tmp_path / "out", options, echo=lines.append)
    assert [j.job_id for j in jobs] == ["700", "701_0", "701_1"]
    assert (
        lines[1].startswith("submit c seed1: job 701_0  stdout ") and "submitit/701_0_0_log.err" in lines[1]
    )
    first, second = (record / "script0.sh").read_text(), (record / "script1.sh").read_text()
    for option in ("--partition=gpu", "--time=720", "--gpus-per-node=2", "--cpus-per-task=8", "--mem=32GB",
                   "--account=abc", "--job-name=letkd"):  # fmt: skip
        assert f"#SBATCH {option}\n" in first and f"#SBATCH {option}\n" in second
    assert "--array=0-1%2" in second and "--dependency=afterany:700" in second
    assert "--dependency" not in first and (tmp_path / "out" / "submitit").is_dir()


def test_command_help_is_complete(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["sweep", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    words = ("--seeds", "--out", "--executor", "--partition", "--time", "--gpus-per-job", "--cpus-per-job",
             "--mem-gb", "--array-parallelism", "--sbatch", "sweep.json", "letkd report", "--grid",
             "--runs-per-gpu", "subclasses_per_class")  # fmt: skip
    for word in words:
        assert word in text, word
    assert cli_main(["sweep", CONFIGS[0], "--seeds", "0"]) == 1
    assert "--seeds 0: must be 1 to 1000" in capsys.readouterr().err


def test_manifest_lists_the_runs_of_every_call(workdir, tmp_path):
    update_manifest(tmp_path, build_grid(CONFIGS[:1], [0, 1], tmp_path, TINY), {"executor": "local"})
    update_manifest(tmp_path, build_grid(CONFIGS, [1, 2], tmp_path, TINY), {"executor": "slurm"})
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert sorted(r["folder"] for r in data["runs"]) == [
        "digits-kd/seed1", "digits-kd/seed2", "digits-vanilla/seed0", "digits-vanilla/seed1",
        "digits-vanilla/seed2",
    ]  # fmt: skip
    assert data["seeds"] == [0, 1, 2] and data["settings"] == {"executor": "slurm"}
    run = next(r for r in data["runs"] if r["folder"] == "digits-kd/seed2")
    assert run["overrides"][-1] == "seed=2" and run["config"].endswith("configs/digits/kd.yaml")


def test_grid_is_the_cartesian_product_with_folders_named_by_the_values(workdir, tmp_path):
    keys = ["method.params.layers.0.subclasses_per_class=1,2", "method.params.layers.1.alpha=0.5,1.0"]
    grid = build_grid(["configs/digits/letkd2.yaml"], [0, 1], tmp_path, TINY, keys)
    assert len(grid) == 2 * 2 * 2
    folders = sorted(Path(r.folder).relative_to(tmp_path).as_posix() for r in grid)
    assert folders[:2] == ["digits-letkd2/subclasses_per_class=1,alpha=0.5/seed0",
                           "digits-letkd2/subclasses_per_class=1,alpha=0.5/seed1"]  # fmt: skip
    assert folders[-1] == "digits-letkd2/subclasses_per_class=2,alpha=1.0/seed1"
    run = next(r for r in grid if r.folder.endswith("subclasses_per_class=2,alpha=0.5/seed1"))
    assert run.overrides[-3:] == (keys[0].replace("1,2", "2"), keys[1].replace("0.5,1.0", "0.5"), "seed=1")
    assert run.title == "digits-letkd2 subclasses_per_class=2,alpha=0.5 seed1"
    assert run.log == tmp_path / "logs" / "digits-letkd2-subclasses_per_class=2,alpha=0.5-seed1.log"
    assert len(waves(grid)[0]) == 1  # the first run trains the teacher, the others reuse it
    lists = build_grid([CONFIGS[0]], [0], tmp_path, TINY, ["train.schedule.milestones=[2,4],[3,6]"])
    assert [Path(r.folder).parent.name for r in lists] == ["milestones=[2_4]", "milestones=[3_6]"]
    assert lists[1].overrides[-2] == "train.schedule.milestones=[3,6]"


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["method.params.layers.5.alpha=1,2"], "'layers' has 2 item(s) (items 0-1), no item 5"),
        (["method.params.layers.1.temperature.x=1,2"], "'temperature' is not a section or a list"),
        (["train.lr="], "expected KEY=v1,v2,... with no empty value"),
        (["train.lr=0.1,0.10"], "a value is given twice"),
        (["name=a b,a_b"], "two values give the same folder name"),
        (["train.lr=0.1", "train.lr=0.2"], "given twice; list all its values in one --grid"),
        (["train.epochs=1,zero"], "train.epochs"),
    ],
)
def test_bad_grids_are_refused(workdir, tmp_path, grid, message):
    with pytest.raises(SweepError) as exc:
        build_grid(["configs/digits/letkd2.yaml"], [0], tmp_path, TINY, grid)
    assert message in str(exc.value)
    with pytest.raises(SweepError, match="both an override and a --grid key"):
        build_grid(["configs/digits/letkd2.yaml"], [0], tmp_path, [*TINY, "train.lr=1"], ["train.lr=1,2"])
    with pytest.raises(SweepError, match=r"letkd2.yaml \(every grid point\): unknown model 'nope'"):
        build_grid(["configs/digits/letkd2.yaml"], [0], tmp_path, [*TINY, "model.name=nope"],
                   ["train.lr=1,2"])
    assert split_values("a,[1,2],'x,y', {b: 1, c: 2}") == ["a", "[1,2]", "'x,y'", "{b: 1, c: 2}"]


@pytest.mark.slow
def test_grid_sweep_end_to_end(workdir, tmp_path, capsys):
    """Two grid points run (in this process, through submitit's debug executor), the report showing the
    varied key as a column, and ``letkd sweep`` on two emulated GPU slots skipping both."""
    out = tmp_path / "lr"
    fast = [*TINY, "train.max_steps_per_epoch=2", "data.batch_size=16"]
    grid = build_grid(["configs/digits/resnet8.yaml"], [0], out, fast, ["train.lr=0.05,0.2"])
    prepare_dir(out)
    assert len(submit_slurm(grid, out, SlurmOptions(), cluster="debug", echo=lambda line: None)) == 2
    assert {p.relative_to(out).as_posix() for p in out.glob("*/*/seed0")} == {
        "digits-resnet8/lr=0.05/seed0", "digits-resnet8/lr=0.2/seed0"}  # fmt: skip
    assert cli_main(["report", str(out), "--out", str(tmp_path / "r")]) == 0
    table = capsys.readouterr().out
    assert "| method | lr | n | seeds | epochs |" in table
    assert "| vanilla | 0.05 | 1 | 0 | 1 |" in table and "| vanilla | 0.2 | 1 | 0 | 1 |" in table
    args = ["sweep", "configs/digits/resnet8.yaml", "--grid", "train.lr=0.05,0.2", "--seeds", "1",
            "--gpus", "0,1", "--out", str(out), *fast]  # fmt: skip
    assert cli_main(args) == 0
    printed = capsys.readouterr()
    assert "warning: --gpus 0,1: torch sees no CUDA GPU here" in printed.err  # the ids are slots (S14)
    assert "sweep: 2 runs (1 configs x 2 grid points x 1 seeds)" in printed.out
    assert "0 completed, 2 skipped, 0 failed" in printed.out
