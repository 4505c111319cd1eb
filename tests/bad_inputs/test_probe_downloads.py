# ruff: noqa: E501  (rows of a table: one per line reads best)
"""The download rows of the probe table (D1-D3, M*, T*, DL*, DM*, RO*, P*): published teachers and dataset
archives from a local server (127.0.0.1), a stalled one, or no server at all, through ``letkd`` in-process.
Each row checks the exit status and the one message, that the cache heals or is left clean (no temporary
file, lock or empty folder), and that no file ran code. The evaluation after a successful fetch is stubbed:
the rows are about fetching (evaluation has rows of its own, E*)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from bad_inputs.teacher_files import CKPT, fake_cifar_archive, teacher_files
from letkd.cli import main
from letkd.data import download, http
from letkd.models import published
from local_http import dead_url, serve, stalled
from read_only import read_only

EVAL = ["eval", "--checkpoint", "crd:resnet56", "--data", "digits", "--num-classes", "100", "--json"]
FOLDER = "resnet56_vanilla"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    marker = tmp_path_factory.mktemp("marker") / "EXECUTED"
    files, tars = teacher_files(marker)
    return files, tars, marker


@pytest.fixture()
def env(tmp_path, monkeypatch, made):
    """An offline machine with a local server: published sources and dataset URLs point at closed ports,
    downloads give up quickly, the evaluation after a fetch is stubbed, and the cwd is ``tmp_path``."""
    files, tars, marker = made
    monkeypatch.chdir(tmp_path)
    dead = dead_url("/x")
    archive = published.ArchiveSource(
        f"{dead}/cifar_teachers.tar", "cifar_teachers.tar", CKPT, published.CACHE_FIX
    )
    monkeypatch.setattr(published, "SOURCES", [archive, published.FileSource(dead + "/{folder}/" + CKPT)])
    for name, entry in list(download.ARCHIVES.items()):
        monkeypatch.setitem(download.ARCHIVES, name, replace(entry, url=f"{dead}/{entry.filename}"))
    for var in ("LETKD_DATA_MIRROR", "LETKD_TEACHER_MIRROR", "LETKD_DEBUG", "LETKD_TEACHERS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("LETKD_DATA", str(tmp_path / "letkd_data"))
    monkeypatch.setenv(http.TIMEOUT_ENV, "0.5")
    monkeypatch.setenv(http.RETRIES_ENV, "1")
    monkeypatch.setattr(http, "BACKOFF_SECONDS", 0.05)
    stub = {"top1": 1.0, "top5": 5.0, "loss": 2.0, "count": 360}
    monkeypatch.setattr("letkd.engine.evaluation.evaluate", lambda *a, **k: dict(stub))
    with serve() as server:
        for case, data in files.items():
            server.files[f"/m/{case}/{FOLDER}/{CKPT}"] = data
        server.files["/release/cifar_teachers.tar"] = tars["good"]
        server.files["/d/fake/cifar-100-python.tar.gz"] = fake_cifar_archive()
        server.files["/d/html/cifar-100-python.tar.gz"] = files["html"]
        yield {
            "server": server,
            "tars": tars,
            "files": files,
            "marker": marker,
            "cache": tmp_path / "th" / "hub" / "checkpoints" / "letkd",
            "root": tmp_path,
            "archive": archive,
        }


def letkd(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "Warning" not in err  # one clean message, no library noise
    return code, out, err


def error_block(err: str) -> str:
    lines = err.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith("error:")]
    return "\n".join([lines[start], *[line for line in lines[start + 1 :] if line.startswith("  ")]])


def files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


MIRROR_ROWS = [
    ("M2", "trunc", "the file is no usable resnet56: cannot read (corrupt, or not a torch file)"),
    ("M3", "wrongarch", "the file is no usable resnet56: does not match ResNetCifar: missing keys"),
    ("M4", "wrongclasses", "fc.weight"),
    ("M5", "evil", "refused: unpickling it would run code"),
    ("M6", "evil2", "refused: unpickling it would run code"),
    ("M7", "evillegacy", "refused: unpickling it would run code"),
    ("M8", "evilpickle", "the file is no usable resnet56: cannot read"),
    ("M9", "html", "the file is no usable resnet56: cannot read"),
    ("M10", "empty", "the file is no usable resnet56: cannot read"),
    ("M11", "n404", "the server answered HTTP 404"),
]


@pytest.mark.parametrize("row, case, phrase", MIRROR_ROWS, ids=[r[0] for r in MIRROR_ROWS])
def test_mirror_files_of_every_bad_kind_are_refused(row, case, phrase, env, monkeypatch, capsys):
    url = env["server"].url(f"/m/{case}")
    monkeypatch.setenv("LETKD_TEACHER_MIRROR", url)
    code, _, err = letkd(EVAL, capsys)
    block = error_block(err)
    assert code == 1 and block.startswith(
        "error: cannot fetch published teacher crd:resnet56 from any source:"
    )
    assert f"  - {url}/{FOLDER}/{CKPT}: " in block and phrase in block, block
    assert block.count("Without a network") == 1  # said once, after the list of sources
    assert files_in(env["root"] / "th") == [] and not env["marker"].exists()


def test_M1_a_good_mirror_file_is_installed_once(env, monkeypatch, capsys):
    monkeypatch.setenv("LETKD_TEACHER_MIRROR", env["server"].url("/m/good"))
    assert letkd(EVAL, capsys)[0] == 0
    assert letkd(EVAL, capsys)[0] == 0  # from the cache now
    assert files_in(env["cache"]) == [FOLDER, f"{FOLDER}/{CKPT}"]
    assert env["server"].requests[f"/m/good/{FOLDER}/{CKPT}"] == 1


TAR_ROWS = [  # id, archive planted in the cache, phrase of the offline error (None: the archive works)
    ("T1", "good", None),
    ("T2", "dotslash", None),
    ("T2b", "topfolder", None),
    ("T3", "othername", f"holds no {FOLDER}/{CKPT}; it holds: cifar_teachers/resnet56/{CKPT}"),
    ("T4", "wrongarch", f"its member {'cifar_teachers/' + FOLDER}/{CKPT} is no usable resnet56"),
    ("T5", "evil", "refused: unpickling it would run code"),
    ("T6", "html", "is no usable resnet56: cannot read"),
    ("T7", "trunc", "is damaged (ReadError"),
    ("T8", "htmlpage", "is damaged (ReadError"),
    ("T9", "symlink", "is a link: refused"),
]


TAR_CASES = [(*r, online) for r in TAR_ROWS for online in ((False, True) if r[2] else (False,))]


@pytest.mark.parametrize(
    "row, tar, phrase, online",
    TAR_CASES,
    ids=[f"{c[0]}-{'healed' if c[3] else 'offline'}" for c in TAR_CASES],
)
def test_a_cached_archive_is_used_or_moved_aside_and_fetched_again(
    row, tar, phrase, online, env, monkeypatch, capsys
):
    cache = env["cache"]
    cache.mkdir(parents=True)
    (cache / "cifar_teachers.tar").write_bytes(env["tars"][tar])
    if online:  # the archive's URL serves a good copy
        url = env["server"].url("/release/cifar_teachers.tar")
        source = replace(env["archive"], url_=url)
        monkeypatch.setattr(published, "SOURCES", [source, *published.SOURCES[1:]])
    code, _, err = letkd(EVAL, capsys)
    if phrase is None:  # usable as it is: installed, archive deleted, nothing fetched
        assert code == 0, err
        assert files_in(cache) == [FOLDER, f"{FOLDER}/{CKPT}"] and env["server"].requests == {}
    elif online:  # healed: the bad archive is kept aside, a fresh one fetched and used
        assert code == 0, err
        assert f"warning: the cached archive {cache / 'cifar_teachers.tar'}" in err and "moved aside" in err
        assert files_in(cache) == ["cifar_teachers.tar.rejected", FOLDER, f"{FOLDER}/{CKPT}"]
    else:  # the message names the cached file, what is wrong with it and where it went
        block = error_block(err)
        assert code == 1 and f"the cached archive {cache / 'cifar_teachers.tar'}" in block and phrase in block
        assert "moved aside to" in block and "a fresh copy failed" in block
        assert files_in(cache) == ["cifar_teachers.tar.rejected"]  # never reused as it was
    assert not env["marker"].exists()


def test_T10_a_mixed_archive_installs_the_good_teacher_only(env, capsys):
    env["cache"].mkdir(parents=True)
    (env["cache"] / "cifar_teachers.tar").write_bytes(env["tars"]["mixed"])
    assert letkd(EVAL, capsys)[0] == 0
    assert files_in(env["cache"]) == [FOLDER, f"{FOLDER}/{CKPT}"] and not env["marker"].exists()


def test_T11_a_working_mirror_comes_first(env, monkeypatch, capsys):
    env["cache"].mkdir(parents=True)
    (env["cache"] / "cifar_teachers.tar").write_bytes(env["tars"]["othername"])
    monkeypatch.setenv("LETKD_TEACHER_MIRROR", env["server"].url("/m/good"))
    assert letkd(EVAL, capsys)[0] == 0
    assert env["server"].requests[f"/m/good/{FOLDER}/{CKPT}"] == 1


def test_DL1_what_a_killed_download_left_is_removed_by_the_next_one(env, monkeypatch, capsys):
    folder = env["cache"] / FOLDER
    folder.mkdir(parents=True)
    left = [f".{CKPT}.1a2b.download.3c4d.partial", f".{CKPT}.5e6f.partial", f".{CKPT}.lock"]
    for name in left:
        (folder / name).write_bytes(b"half a download")
    (env["cache"] / ".fetch.lock").write_text("12345\n")  # released by the kernel when the process died
    monkeypatch.setenv("LETKD_TEACHER_MIRROR", env["server"].url("/m/good"))
    assert letkd(EVAL, capsys)[0] == 0
    assert files_in(env["cache"]) == [FOLDER, f"{FOLDER}/{CKPT}"]


def test_DL4_a_stalled_teacher_mirror_times_out(env, monkeypatch, capsys):
    with stalled() as base:
        monkeypatch.setenv("LETKD_TEACHER_MIRROR", base)
        code, _, err = letkd(EVAL, capsys)
    block = error_block(err)
    assert (
        code == 1 and f"  - {base}/{FOLDER}/{CKPT}: no answer for 0.5 s" in block and "(2 attempts)" in block
    )
    assert "warning: " in err and files_in(env["root"] / "th") == []


def test_DL5_a_stalled_data_mirror_times_out(env, workspace, monkeypatch, capsys):
    with stalled() as base:
        monkeypatch.setenv("LETKD_DATA_MIRROR", base)
        argv = ["eval", "--checkpoint", workspace / "runs/done/best.pt", "--data", "cifar100", "--download"]
        code, _, err = letkd([*argv, "--root", env["root"] / "data"], capsys)
    assert (
        code == 1
        and f"cannot download {base}/cifar-100-python.tar.gz (no answer for 0.5 s" in error_block(err)
    )
    assert not (env["root"] / "data").exists()  # no data folder left


DATA_ROWS = [  # id, mirror case (None: offline), what is in the data folder first, phrase
    ("DM1", "fake", None, "has md5 "),
    ("DM2", "html", None, "has md5 "),
    ("DM3", "n404", None, "the server answered HTTP 404"),
    ("DM4", None, "partial", "is no usable copy (md5 "),
    (
        "DM5",
        None,
        "incomplete",
        "cifar-100-python is in the way: an incomplete 'cifar-100-python/' (missing train, test)",
    ),
    ("DM6", "fake", "incomplete", "is in the way"),
]


@pytest.mark.parametrize("row, mirror, planted, phrase", DATA_ROWS, ids=[r[0] for r in DATA_ROWS])
def test_dataset_archives_that_fail(row, mirror, planted, phrase, env, workspace, monkeypatch, capsys):
    data = env["root"] / "data"
    if planted == "partial":
        data.mkdir()
        (data / "cifar-100-python.tar.gz").write_bytes(os.urandom(100_000))
    elif planted == "incomplete":
        (data / "cifar-100-python").mkdir(parents=True)
        (data / "cifar-100-python" / "meta").write_text("x")
    before = files_in(data)
    if mirror:
        monkeypatch.setenv("LETKD_DATA_MIRROR", env["server"].url(f"/d/{mirror}"))
    argv = ["eval", "--checkpoint", workspace / "runs/done/best.pt", "--data", "cifar100", "--download"]
    code, _, err = letkd([*argv, "--root", data], capsys)
    assert code == 1 and phrase in error_block(err), err
    assert files_in(data) == before  # nothing added, the planted file or folder untouched
    assert not list(env["root"].parent.rglob("PWNED"))
    if planted == "incomplete":
        assert env["server"].requests == {}  # nothing downloaded that could not be extracted


RO_ROWS = [  # id, folder made read-only (below $TORCH_HOME), phrase
    ("RO1", ".", "cannot write the teacher cache {cache}: "),
    ("RO3", "hub/checkpoints/letkd", "cannot write the teacher cache {cache}: "),
    ("RO4", f"hub/checkpoints/letkd/{FOLDER}", f"cannot write the teacher cache {{cache}}/{FOLDER}: "),
    ("RO5", "hub/checkpoints/letkd+", "cannot write the teacher cache {cache}: "),
]


@pytest.mark.parametrize("row, frozen, phrase", RO_ROWS, ids=[r[0] for r in RO_ROWS])
def test_a_read_only_teacher_cache_is_named(row, frozen, phrase, env, monkeypatch, capsys):
    home = env["root"] / "th"
    target = home / frozen.rstrip("+")
    target.mkdir(parents=True)
    if frozen.endswith("+"):  # the teacher's own folder stays writable
        (target / FOLDER).mkdir()
    monkeypatch.setenv("LETKD_TEACHER_MIRROR", env["server"].url("/m/good"))
    with read_only(target):
        code, _, err = letkd(EVAL, capsys)
    block = error_block(err)
    assert code == 1 and phrase.format(cache=env["cache"]) in block, block
    assert "set $LETKD_TEACHERS to a writable folder" in block and "network" not in block
    assert env["server"].requests == {}  # a local problem: checked before any transfer


def test_RO2_a_read_only_cache_holding_the_file_is_used(env, monkeypatch, capsys):
    (env["cache"] / FOLDER).mkdir(parents=True)
    (env["cache"] / FOLDER / CKPT).write_bytes(env["files"]["good"])
    with read_only(env["cache"] / FOLDER), read_only(env["cache"]):
        assert letkd(EVAL, capsys)[0] == 0


@pytest.mark.parametrize("row", ["RO6", "RO7"])
def test_a_read_only_data_folder_is_named(row, env, workspace, monkeypatch, capsys):
    data = env["root"] / "data"
    data.mkdir()
    monkeypatch.setenv("LETKD_DATA", str(data))
    monkeypatch.setenv("LETKD_DATA_MIRROR", env["server"].url("/d/fake"))
    if row == "RO6":
        argv = ["eval", "--checkpoint", workspace / "runs/done/best.pt", "--data", "cifar100", "--download"]
    else:
        argv = [
            "run",
            workspace / "configs/digits/vanilla.yaml",
            "data.name=cifar100",
            "--download",
            "--out",
            "out/ro",
        ]
    with read_only(data):
        code, _, err = letkd(argv, capsys)
    block = error_block(err)
    assert code == 1 and f"cannot write the data folder {data}: " in block, block
    assert "pass a writable data.root (--root), or set $LETKD_DATA to a writable folder" in block
    assert env["server"].requests == {} and not (env["root"] / "out" / "ro").exists()


def test_P1_a_partial_teacher_file_in_the_cache_is_deleted_and_fetched_again(env, monkeypatch, capsys):
    (env["cache"] / FOLDER).mkdir(parents=True)
    (env["cache"] / FOLDER / CKPT).write_bytes(env["files"]["good"][:1_000_000])
    monkeypatch.setenv("LETKD_TEACHER_MIRROR", env["server"].url("/m/good"))
    code, _, err = letkd(EVAL, capsys)
    assert code == 0 and f"warning: {env['cache'] / FOLDER / CKPT} is no usable resnet56" in err
    assert "deleted, fetching it again" in err
    assert (env["cache"] / FOLDER / CKPT).read_bytes() == env["files"]["good"]


def test_P2_offline_the_run_says_the_damaged_copy_was_deleted(env, workspace, capsys):
    (env["cache"] / FOLDER).mkdir(parents=True)
    (env["cache"] / FOLDER / CKPT).write_bytes(env["files"]["good"][:1_000_000])
    argv = ["run", workspace / "configs/digits/kd.yaml", "teacher.name=resnet56", "teacher.checkpoint=crd:resnet56",
            "--out", "out/p2", "train.epochs=1"]  # fmt: skip
    code, _, err = letkd(argv, capsys)
    block = error_block(err)
    assert (
        code == 1 and f"(the damaged copy in the cache was deleted: {env['cache'] / FOLDER / CKPT})" in block
    )
    assert files_in(env["cache"]) == [] and not (env["root"] / "out" / "p2").exists()


def test_D1_offline_every_missing_input_is_reported_at_once(env, capsys):
    from bad_inputs.conftest import ROOT

    config = ROOT / "configs/cifar100/resnet56_resnet20/kd.yaml"
    code, _, err = letkd(["run", config, "--download", "--out", "out/d1"], capsys)
    block = error_block(err)
    assert code == 1 and block.startswith(
        "error: 2 inputs of this run are missing or unusable (nothing was started):"
    )
    items = block.splitlines()[1:]
    assert (
        items[0].startswith("  - dataset cifar100: cannot download") and "cifar-100-python.tar.gz" in items[0]
    )
    assert items[1].startswith("  - teacher crd:resnet56: cannot fetch published teacher crd:resnet56")
    assert not (env["root"] / "out" / "d1").exists() and files_in(env["root"] / "th") == []
    assert not (env["root"] / "letkd_data").exists()


@pytest.mark.parametrize("row", ["D2", "D3"])
def test_offline_dataset_downloads_say_what_to_fetch(row, env, workspace, capsys):
    from bad_inputs.conftest import ROOT

    if row == "D2":
        argv = [
            "eval",
            "--checkpoint",
            workspace / "runs/done/best.pt",
            "--data",
            "tiny_imagenet",
            "--download",
        ]
    else:
        argv = ["train", ROOT / "configs/cifar100/teachers/resnet56.yaml", "--download", "--out", "out/d3"]
    code, _, err = letkd([*argv] + (["--root", env["root"] / "dd"] if row == "D2" else []), capsys)
    block = error_block(err)
    assert (
        code == 1
        and "cannot download " in block
        and "Without a network: fetch it on a connected machine (md5" in block
    )
    assert not (env["root"] / "out").exists() and not (env["root"] / "dd").exists()
    assert not (env["root"] / "letkd_data").exists()
