"""Every row of :data:`cases.CASES` through ``letkd.cli.main`` in-process: the exit status, one clean line
(no traceback), and nothing the case was given changed (run folders, checkpoints, datasets, caches)."""

from __future__ import annotations

import contextlib
import shlex

import pytest

from bad_inputs.cases import CASES, Case
from bad_inputs.conftest import EXECUTED, FAST, ROOT, tree_digest
from letkd.cli import main
from letkd.engine.rundir import claim_run_dir


def run_case(case: Case, workspace, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``case`` (anything with ``argv`` and ``hold``) in ``workspace``; return ``(exit status, stdout,
    stderr)``."""
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("LETKD_DATA", raising=False)
    monkeypatch.delenv("LETKD_DEBUG", raising=False)
    argv = shlex.split(case.argv.replace("{fast}", " ".join(FAST)).replace("{root}", str(ROOT)))
    hold = claim_run_dir(workspace / case.hold, resume=True) if case.hold else contextlib.nullcontext()
    capsys.readouterr()
    with hold:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_clean_line_and_loses_nothing(case, workspace, monkeypatch, capsys):
    before = tree_digest(workspace, skip=("out/",))
    code, out, err = run_case(case, workspace, monkeypatch, capsys)
    assert "Traceback" not in err + out
    assert code == case.code, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if case.code:
        assert len(errors) == 1, err  # exactly one message, on one line
        assert case.phrase in errors[0], errors[0]
    else:  # a warning, and the command still did its job
        assert not errors, err
        assert any(line.startswith("warning:") and case.phrase in line for line in err.splitlines()), err
        assert case.stdout in out
    assert tree_digest(workspace, skip=("out/",)) == before  # nothing given to the case changed
    assert not (workspace / EXECUTED).exists()  # no checkpoint ran code
    for path in case.absent:
        assert not (workspace / path).exists(), f"{path} was made: an expensive stage ran before the check"


def test_the_table_covers_at_least_forty_kinds():
    assert len({c.name for c in CASES}) == len(CASES) >= 40
