"""Every row of :data:`sweep_cases.SWEEP_CASES` through ``letkd.cli.main`` in-process: the exit status, one
clean line (no traceback), nothing in the workspace changed (run folders, sweep folders and their
manifests), and nothing started where the sweep had to refuse."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil

import pytest
import yaml

from bad_inputs.conftest import EXECUTED, FAST, tree_digest
from bad_inputs.sweep_cases import SWEEP_CASES, SweepCase
from letkd.cli import main
from letkd.engine.rundir import claim_run_dir
from letkd.sweep import hold_sweep_dir


def _edit_yaml(source, target, **changes) -> None:
    data = yaml.safe_load(source.read_text())
    for dotted, value in changes.items():
        node, *path = dotted.split("__")
        parent = data
        for part in [node, *path][:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = [node, *path][-1]
        parent[int(last) if isinstance(parent, list) else last] = value
    target.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def sweep_space(workspace):
    """The workspace plus the configs and sweep folders of the sweep cases (see sweep_cases.py)."""
    digits, cfg = workspace / "configs" / "digits", workspace / "cfg"
    cfg.mkdir(exist_ok=True)
    _edit_yaml(digits / "resnet8.yaml", cfg / "typo_model.yaml", name="digits-typo", model__name="resnt8")
    _edit_yaml(digits / "letkd1.yaml", cfg / "typo_tap.yaml", name="digits-typotap",
               method__params__layers__0__student_tap="penultimat")  # fmt: skip
    shutil.copy(digits / "kd.yaml", cfg / "kd_T=4.yaml")
    shutil.copy(digits / "resnet8.yaml", cfg / "resnet8_copy.yaml")
    sweeps = workspace / "sweeps"
    for name in ("done", "resume", "s7a"):
        shutil.copytree(workspace / "runs" / "done", sweeps / name / "digits-resnet8" / "seed0")
    summary = sweeps / "resume" / "digits-resnet8" / "seed0" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "interrupted"}))
    shutil.move(sweeps / "s7a", workspace / "out" / "s7a")
    manifests = {"m_corrupt": '{"runs": "garbage", "configs": 5', "m_list": "[1,2,3]",
                 "m_junk": '{"runs": [{"folder": 5}, {"folder": "x", "seed": "NaN"}, 7]}'}  # fmt: skip
    for name, text in manifests.items():
        (sweeps / name).mkdir()
        (sweeps / name / "sweep.json").write_text(text)
    (sweeps / "m_dir" / "sweep.json").mkdir(parents=True)
    (sweeps / "logdir" / "logs" / "digits-resnet8-seed0.log").mkdir(parents=True)
    shutil.copytree(workspace / "runs" / "done", sweeps / "s8" / "a")
    unfinished = sweeps / "s8" / "b"
    shutil.copytree(workspace / "runs" / "done", unfinished)
    (unfinished / "summary.json").unlink()
    _edit_yaml(unfinished / "config.yaml", unfinished / "config.yaml", train__epochs=3)
    return workspace


def _run(case: SweepCase, space, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.chdir(space)
    monkeypatch.delenv("LETKD_DEBUG", raising=False)
    argv = shlex.split(case.argv.replace("{fast}", " ".join(FAST)))
    holds = contextlib.ExitStack()
    if case.hold_run:
        holds.enter_context(claim_run_dir(space / case.hold_run, resume=True))
    if case.hold_sweep:
        holds.enter_context(hold_sweep_dir(space / case.hold_sweep))
    capsys.readouterr()
    with holds:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", SWEEP_CASES, ids=[c.id for c in SWEEP_CASES])
def test_sweep_case_is_clean(case, sweep_space, monkeypatch, capsys):
    before = tree_digest(sweep_space, skip=("out/",))
    absent = [path for path in case.absent if not (sweep_space / path).exists()]  # an earlier case's stay
    code, out, err = _run(case, sweep_space, monkeypatch, capsys)
    assert "Traceback" not in err + out
    assert code == case.code, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if case.code:
        assert len(errors) == 1, err
        assert case.phrase in errors[0], errors[0]
        assert not any(line.startswith(("start ", "done ")) for line in out.splitlines()), out  # none started
    else:
        assert not errors, err
        assert case.stdout in out, out
    if case.warning:
        assert any(l.startswith("warning:") and case.warning in l for l in err.splitlines()), err
    assert tree_digest(sweep_space, skip=("out/",)) == before  # nothing it was given changed
    assert not (sweep_space / EXECUTED).exists()
    for path in absent:
        assert not (sweep_space / path).exists(), f"{path} was made before the check"


def test_every_sweep_row_of_the_probe_is_here():
    ids = {c.id.split("-")[0] for c in SWEEP_CASES}
    expected = {"S1c", "S2a", "S3", "S4a", "S4b", "S4c", "S4d", "S4e", "S4f", "S4g", "S4h", "S4i", "S5",
                "S5b", "S6", "S7a", "S7b", "S7c", "S7d", "S7e", "S8a", "S8b", "S8d", "S9a", "S9b", "S9c",
                "S10", "S11",
                "S12", "S13", "S15", "S16", "S16b"}  # fmt: skip
    assert (
        expected <= ids
    )  # S1, S14 and G6 are process tests (test_sweep_processes.py); S8c: the pairs layout
