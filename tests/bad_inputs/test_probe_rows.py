"""Every row of :data:`bad_inputs.probe_rows.ROWS` through ``letkd.cli.main`` in-process: the exit status,
one clean message (no traceback), nothing given to the command changed, nothing left where the command
failed, and no code run from any file. No row reaches the network: the published sources and the dataset
URLs point at a port where nothing listens."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bad_inputs.conftest import EXECUTED, tree_digest
from bad_inputs.probe_rows import ROWS, Row
from bad_inputs.test_cli_cases import run_case
from local_http import dead_url


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """No network for the row: every published teacher and dataset URL is a closed local port."""
    from letkd.data import download
    from letkd.models import published

    dead = dead_url("/x")
    monkeypatch.setattr(
        published, "SOURCES", [published.FileSource(dead + "/{folder}/" + published.FILE_NAME)]
    )
    for name, archive in list(download.ARCHIVES.items()):
        monkeypatch.setitem(download.ARCHIVES, name, replace(archive, url=f"{dead}/{archive.filename}"))
    for var in ("LETKD_DATA", "LETKD_DATA_MIRROR", "LETKD_TEACHER_MIRROR", "LETKD_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LETKD_TEACHERS", str(tmp_path / "teachers"))
    monkeypatch.setenv("LETKD_DOWNLOAD_RETRIES", "0")


def message(err: str) -> str:
    """The one ``error:`` line with the indented lines of its list (exactly one error is printed)."""
    lines = err.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(starts) == 1, err
    block = [lines[starts[0]]]
    block += [line for line in lines[starts[0] + 1 :] if line.startswith("  ")]
    return "\n".join(block)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_probe_row(row, probe_workspace, offline, monkeypatch, capsys):
    ws = probe_workspace
    before = tree_digest(ws, skip=("out/", "files/precious.pt2"))
    code, out, err = run_case(row, ws, monkeypatch, capsys)
    assert "Traceback" not in out + err
    assert code == row.code, err
    if row.code == 2:  # a usage error from the argument parser
        assert row.phrase in err
    elif row.code:
        assert row.phrase in message(err), err
    else:
        assert not [line for line in err.splitlines() if line.startswith("error:")], err
        assert row.stdout in out, out
        if row.warns:
            assert any(line.startswith("warning:") and row.phrase in line for line in err.splitlines()), err
    assert tree_digest(ws, skip=("out/", "files/precious.pt2")) == before  # nothing given was changed
    assert not (ws / EXECUTED).exists()
    for path in row.absent:
        assert not (ws / path).exists(), f"{path} exists: work was done or debris left before the refusal"


def test_the_rows_are_unique():
    assert len({r.id for r in ROWS}) == len(ROWS)


def test_I23_inspect_after_following_the_fit_advice_names_the_edit(
    probe_workspace, offline, monkeypatch, capsys
):
    """A run whose config.yaml K was edited: `letkd fit` of that config fits the new K, and `letkd inspect`
    then says the checkpoint and the config disagree (not a raw tensor-size error)."""
    import shutil

    ws = probe_workspace
    run = ws / "out" / "i23"
    shutil.copytree(ws / "runs" / "ed_K", run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("cache_dir: runs/cache", "cache_dir: out/i23cache"))
    fit = Row("I23a", "fit out/i23/config.yaml --device cpu --no-progress", 0, "")
    code, out, err = run_case(fit, ws, monkeypatch, capsys)
    assert code == 0 and "K=64" in out, err
    inspect = Row(
        "I23", "inspect out/i23 --images 2 --stats-images 16 --device cpu --out out/i23/pictures", 1, ""
    )
    code, out, err = run_case(inspect, ws, monkeypatch, capsys)
    assert code == 1 and "Traceback" not in err
    assert (
        "has 32 templates but out/i23/config.yaml asks for 64: the config was edited after training"
        in message(err)
    )
