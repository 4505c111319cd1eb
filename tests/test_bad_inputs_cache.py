"""Bad inputs in the supervision cache, one row each: how the cache is broken, what the user is told, and
that letkd repairs it (damaged file moved aside, never deleted; entry fitted again) or stops with one
clean line, while every other cache entry stays byte-identical.

The cache is a tiny digits fit (64 training images, 4096 rows, K=4) made once per module and copied
into each case.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from letkd.cli import main
from letkd.supervision import load_artifact

LAYERS = [
    {"kind": "codebook", "student_tap": "penultimate", "teacher_tap": "penultimate", "num_templates": 4},
    {
        "kind": "subclass",
        "student_tap": "layer3.0",
        "teacher_tap": "penultimate",
        "subclasses_per_class": 2,
        "lda_components": 5,
    },
]


def write_config(folder: Path, cache: Path, layers: list[dict] = LAYERS) -> Path:
    cfg = {
        "seed": 3,
        "data": {"name": "digits", "train_subset": 64, "test_subset": 50, "num_workers": 0},
        "model": {"name": "resnet8"},
        "teacher": {"name": "resnet8"},
        "method": {"name": "letkd", "params": {"layers": layers}},
        "supervision": {"cache_dir": str(cache), "kmeans_iters": 3, "extract_batch_size": 64},
        "train": {"device": "cpu", "epochs": 1, "progress": False},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A cache holding a codebook and a sub-class artefact fitted on one shared row folder."""
    folder = tmp_path_factory.mktemp("pristine")
    assert main(["fit", str(write_config(folder, folder / "cache")), "--no-progress"]) == 0
    return folder / "cache"


def entry(cache: Path, name: str) -> Path:
    """The artefact file (``codebook`` / ``subclass``) or the row folder (``rows``) of the cache."""
    if name == "rows":
        (found,) = [p for p in (cache / "rows").iterdir() if p.is_dir()]
    else:
        (found,) = cache.glob(f"{name}-*.safetensors")
    return found


# ---- ways to break the cache: each returns the damaged file/folder ----


def overwrite_data(cache: Path) -> Path:
    path = entry(cache, "codebook")
    data = bytearray(path.read_bytes())
    data[-16:] = bytes(b ^ 0xFF for b in data[-16:])  # the last tensor's last values; header untouched
    path.write_bytes(bytes(data))
    return path


def truncate_artefact(cache: Path) -> Path:
    path = entry(cache, "codebook")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def not_safetensors(cache: Path) -> Path:
    path = entry(cache, "codebook")
    path.write_text("centres: [1, 2, 3]\n")
    return path


def empty_artefact(cache: Path) -> Path:
    path = entry(cache, "codebook")
    path.write_bytes(b"")
    return path


def header_not_json(cache: Path) -> Path:
    path = entry(cache, "codebook")
    data = bytearray(path.read_bytes())
    data[8] = ord("#")  # the header's opening brace
    path.write_bytes(bytes(data))
    return path


def provenance_not_json(cache: Path) -> Path:
    from safetensors.torch import load_file, save_file

    path = entry(cache, "codebook")
    save_file(load_file(str(path)), str(path), metadata={"letkd": '{"kind": "codebook", '})
    return path


def truncate_rows(cache: Path) -> Path:
    path = entry(cache, "rows")
    rows = path / "rows.f32"
    rows.write_bytes(rows.read_bytes()[:-4096])
    return path


def rows_meta_not_json(cache: Path) -> Path:
    path = entry(cache, "rows")
    (path / "meta.json").write_text('{"num_rows": 40')
    return path


def nan_rows(cache: Path) -> Path:
    path = entry(cache, "rows")
    rows = np.memmap(path / "rows.f32", dtype=np.float32, mode="r+")
    rows[1000] = np.nan
    rows.flush()
    del rows
    return path


def make_temp(path: Path, folder: bool) -> None:
    """A temporary file or folder as a killed write leaves it, last modified an hour ago."""
    if folder:
        path.mkdir()
        (path / "rows.f32").write_bytes(bytes(64))
    else:
        path.write_bytes(b"half an artefact")
    old = time.time() - 3600
    for p in [*path.rglob("*"), path]:
        os.utime(p, (old, old))


def killed_fit(cache: Path) -> Path:
    """A codebook fit killed while saving: no artefact, a temporary file beside where it goes."""
    artefact = entry(cache, "codebook")
    artefact.unlink()
    make_temp(cache / f".{artefact.name}.k1ll3d.tmp", folder=False)
    return artefact


def killed_extraction(cache: Path) -> Path:
    """An extraction killed half-way: a temporary row folder beside the rows."""
    rows = entry(cache, "rows")
    temp = rows.parent / f".{rows.name}.k1ll3d.tmp"
    make_temp(temp, folder=True)
    return temp


def foreign_artefact(cache: Path) -> Path:
    """A sub-class artefact copied over the codebook's name: valid, but not what the run asks for."""
    path = entry(cache, "codebook")
    shutil.copyfile(entry(cache, "subclass"), path)
    return path


def nothing(cache: Path) -> Path:
    return entry(cache, "codebook")


@dataclass(frozen=True)
class Case:
    name: str
    damage: Callable[[Path], Path]
    phrase: str  # what the warning / error line must say
    rc: int  # exit status of `letkd fit`
    moved: bool  # the damaged file/folder is kept beside the entry as <name>.corrupt-<time>
    overrides: tuple[str, ...] = ()
    layers: tuple[dict, ...] = tuple(LAYERS)


NEW_FIT = ("supervision.kmeans_iters=4",)  # new artefacts on the same rows: the rows are read again
BIG_K = ({**LAYERS[0], "num_templates": 5000},)

CASES = [
    Case("data bytes overwritten", overwrite_data, "fails its data checksum", 0, True),
    Case("truncated artefact", truncate_artefact, "not a readable safetensors file", 0, True),
    Case("not safetensors", not_safetensors, "not a readable safetensors file", 0, True),
    Case("empty artefact", empty_artefact, "not a readable safetensors file", 0, True),
    Case("header not JSON", header_not_json, "invalid JSON", 0, True),
    Case("provenance not JSON", provenance_not_json, "unreadable metadata (invalid JSON", 0, True),
    Case("rows truncated", truncate_rows, "rows.f32 is truncated", 0, True, NEW_FIT),
    Case("rows meta not JSON", rows_meta_not_json, "unreadable meta.json", 0, True, NEW_FIT),
    Case("NaN rows", nan_rows, "non-finite features (NaN or infinity) at tap 'penultimate'", 1, False,
         NEW_FIT),
    Case("temp of a killed fit", killed_fit, "removed 1 stale temporary file(s) left by an", 0, False),
    Case("temp of a killed extraction", killed_extraction, "removed 1 stale temporary", 0, False, NEW_FIT),
    Case("foreign artefact", foreign_artefact, "does not match what was asked for", 1, False),
    Case("K above the rows", nothing, "asks for K=5000 templates but", 1, False, layers=BIG_K),
]


def the_line(err: str, phrase: str, prefix: str) -> str:
    """The one stderr line holding ``phrase``; it starts with ``prefix`` and there is no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if phrase in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fit_repairs_or_reports(case: Case, pristine: Path, tmp_path: Path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    config = write_config(tmp_path, cache, list(case.layers))
    before = snapshot(cache)
    damaged = case.damage(cache)
    rel = damaged.relative_to(cache).as_posix()
    kept = snapshot(damaged) if damaged.is_dir() else damaged.read_bytes() if damaged.exists() else None

    assert main(["fit", str(config), *case.overrides, "--no-progress"]) == case.rc
    err = capsys.readouterr().err
    line = the_line(err, case.phrase, "warning:" if case.rc == 0 else "error:")

    after = snapshot(cache)
    for path, digest in before.items():  # every other entry is byte-identical
        if path != rel and not path.startswith(rel + "/"):
            assert after.get(path) == digest, f"{path} changed"
    moved = sorted(damaged.parent.glob(f"{damaged.name}.corrupt-*"))
    assert len(moved) == int(case.moved)
    if case.moved:  # nothing lost: the damaged bytes are kept, and the warning says where
        assert str(moved[0]) in line
        assert (snapshot(moved[0]) if moved[0].is_dir() else moved[0].read_bytes()) == kept
    if case.rc == 0:  # the cache is whole again: every artefact verifies, no temp or lock left
        for artefact in cache.glob("*.safetensors"):
            load_artifact(artefact)
        assert not [p for p in cache.rglob("*") if p.name.endswith((".tmp", ".lock"))]
        assert main(["fit", str(config), *case.overrides, "--no-progress"]) == 0
        assert capsys.readouterr().out.count("cached") == len(case.layers)


@pytest.mark.parametrize("case", [c for c in CASES if c.rc == 1], ids=lambda c: c.name)
def test_run_reports_cache_errors_in_one_line(case: Case, pristine: Path, tmp_path: Path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    config = write_config(tmp_path, cache, list(case.layers))
    case.damage(cache)
    code = main(["run", str(config), *case.overrides, "--out", str(tmp_path / "run")])
    assert code == 1
    the_line(capsys.readouterr().err, case.phrase, "error:")
    assert not (tmp_path / "run" / "last.pt").exists()


# ---- the cached teacher accuracy ----

ACCURACY_DAMAGE = {
    "truncated": lambda text: text[: len(text) // 2],
    "not JSON": lambda text: "top1: 93.1\n",
    "wrong types": lambda text: json.dumps({"top1": "93.1", "top5": 99.0}),
    "NaN": lambda text: text.replace(str(json.loads(text)["top1"]), "NaN"),
    "a list": lambda text: "[93.1, 99.0]",
}
ACCURACY_PHRASE = {
    "truncated": "is not valid JSON",
    "not JSON": "is not valid JSON",
    "wrong types": "field 'top1' is '93.1', not a number",
    "NaN": "field 'top1' is nan, not a finite number",
    "a list": "holds a JSON list, not an object",
}


def seeded_teacher() -> torch.nn.Module:
    from letkd.models import create_model

    torch.manual_seed(7)
    return create_model("resnet8", 10).eval()


@pytest.fixture(scope="module")
def accuracy_cache(tmp_path_factory) -> tuple[Path, Path]:
    """A teacher-accuracy cache with one record (and the 'checkpoint' it is keyed by)."""
    from letkd.config import load_config
    from letkd.pipeline import teacher_accuracy

    folder = tmp_path_factory.mktemp("accuracy")
    checkpoint = folder / "teacher.pth"
    checkpoint.write_bytes(b"stands for a checkpoint: only its hash keys the record")
    cfg = load_config(write_config(folder, folder / "cache"))
    teacher_accuracy(cfg, seeded_teacher(), torch.device("cpu"), str(checkpoint))
    return folder, checkpoint


@pytest.mark.parametrize("how", list(ACCURACY_DAMAGE))
def test_damaged_teacher_accuracy_is_recomputed(how: str, accuracy_cache, tmp_path: Path, capsys):
    from letkd.config import load_config
    from letkd.pipeline import teacher_accuracy

    source, checkpoint = accuracy_cache
    cache = tmp_path / "cache"
    shutil.copytree(source / "cache", cache)
    (record,) = (cache / "teacher_accuracy").glob("*.json")
    good = record.read_text()
    other = record.with_name("another-teacher.json")
    other.write_text('{"top1": 50.0, "top5": 80.0}')
    record.write_text(ACCURACY_DAMAGE[how](good))
    damaged = record.read_bytes()

    cfg = load_config(write_config(tmp_path, cache))
    acc = teacher_accuracy(cfg, seeded_teacher(), torch.device("cpu"), str(checkpoint))
    assert json.loads(good) == acc and all(math.isfinite(acc[k]) for k in ("top1", "top5"))
    line = the_line(capsys.readouterr().err, ACCURACY_PHRASE[how], "warning:")
    (moved,) = record.parent.glob(f"{record.name}.corrupt-*")
    assert str(moved) in line and moved.read_bytes() == damaged
    assert json.loads(record.read_text()) == acc  # the record is whole again
    assert other.read_text() == '{"top1": 50.0, "top5": 80.0}'
