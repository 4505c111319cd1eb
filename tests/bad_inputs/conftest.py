"""The workspace the bad-input cases run in (built once per session): the digits configs, one tiny finished
run, malicious, random and mis-shaped checkpoint files, broken configs, datasets and report folders."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
#: a digits run that takes a second or two: one epoch of two steps on a tiny subset
FAST = [
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "data.batch_size=16",
    "data.train_subset=64",
    "data.test_subset=32",
    "train.progress=false",
    "train.tensorboard=false",
]
#: unpickling the malicious checkpoint would create this file (it must never appear)
EXECUTED = "EXECUTED-BY-UNPICKLING"


def record_execution(path: str) -> str:
    """What the malicious checkpoint runs when unpickled: it leaves a file behind."""
    Path(path).write_text("code ran while loading a checkpoint\n")
    return path


class RunsCodeWhenUnpickled:
    """A pickled instance calls :func:`record_execution` on loading: the kind of file to refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (record_execution, (self.marker,))


def tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``folder`` (run-folder ``.lock`` files excepted: they
    hold the pid of the last process that ran there)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and path.name != ".lock" and not rel.startswith(skip):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _fashion(folder: Path, corrupt: bool = False) -> None:
    """Tiny Fashion-MNIST IDX files (4 train / 3 test images); ``corrupt``: a bad magic number."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("t10k", 3)):
        images = _idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        labels = _idx(rng.integers(0, 10, n, dtype=np.uint8))
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(b"\x07" + images[1:] if corrupt else images)
        )
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """The folder every case runs in (its working directory); see the module docstring."""
    from letkd.config import load_config
    from letkd.models import create_model, save_weights
    from letkd.pipeline import train_from_config

    ws = tmp_path_factory.mktemp("bad-inputs")
    shutil.copytree(ROOT / "configs" / "digits", ws / "configs" / "digits")
    runs, files = ws / "runs", ws / "files"
    old = os.getcwd()
    os.chdir(ws)
    try:
        cfg = load_config("configs/digits/resnet8.yaml", FAST)
        train_from_config(cfg, runs / "done", device="cpu")
    finally:
        os.chdir(old)
    files.mkdir()
    torch.save({"model": create_model("resnet8").state_dict(), "x": RunsCodeWhenUnpickled(ws / EXECUTED)},
               files / "malicious.pt")  # fmt: skip
    with open(files / "malicious.pth", "wb") as fh:
        pickle.dump({"model": {}, "payload": RunsCodeWhenUnpickled(ws / EXECUTED)}, fh, protocol=2)
    (files / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    (files / "a_file").write_text("not a folder\n")
    save_weights(create_model("resnet20", 10), files / "teacher.pt")
    (files / "empty.yaml").write_text("# nothing but a comment\n")
    (files / "list.yaml").write_text("- name: x\n")
    (files / "invalid.yaml").write_text("data: [digits\n")
    shutil.copytree(runs / "done", runs / "malicious_last")
    shutil.copy(files / "malicious.pt", runs / "malicious_last" / "last.pt")
    _fashion(ws / "datasets" / "fm_ok" / "fashion-mnist")
    _fashion(ws / "datasets" / "fm_corrupt" / "fashion-mnist", corrupt=True)
    (ws / "datasets" / "empty").mkdir()
    reports = ws / "reports"
    for name in ("mixed/good", "mixed/wrong_type", "busy/good", "busy/writing"):
        shutil.copytree(runs / "done", reports / name)
    bad = (reports / "mixed" / "wrong_type" / "config.yaml").read_text().replace("seed: 0", "seed: [0]")
    (reports / "mixed" / "wrong_type" / "config.yaml").write_text(bad)
    (reports / "none").mkdir()
    (reports / "none" / "notes.txt").write_text("no run here\n")
    (ws / "out").mkdir()
    return ws


from bad_inputs.probe_workspace import probe_workspace  # noqa: E402, F401  (a session fixture)
