"""Datasets fetched on demand from a local HTTP server: official-format archives generated here."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from letkd.cli import main
from letkd.data import DatasetNotFoundError, create_dataset
from letkd.data import download as dl
from letkd.data.download import ARCHIVES, MIRROR_ENV, DownloadError
from letkd.models import create_model, save_weights
from local_http import dead_url, serve

ROOT = Path(__file__).resolve().parents[1]
TEMP_MARKS = (".download", ".partial", ".extract")


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _batch(rng, n: int, label_key: bytes, num_classes: int) -> tuple[bytes, list[int]]:
    labels = rng.integers(0, num_classes, size=n).tolist()
    batch = {label_key: labels, b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
    return pickle.dumps(batch, protocol=2), labels


def cifar100_archive(seed: int = 0) -> tuple[bytes, list[int]]:
    """``cifar-100-python.tar.gz`` as published (train, test, meta), 5 training and 3 test images."""
    rng = np.random.default_rng(seed)
    train, train_labels = _batch(rng, 5, b"fine_labels", 100)
    test, _ = _batch(rng, 3, b"fine_labels", 100)
    meta = pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, protocol=2)
    files = {"cifar-100-python/train": train, "cifar-100-python/test": test, "cifar-100-python/meta": meta}
    return _tar_gz(files), train_labels


def cifar10_archive() -> bytes:
    rng = np.random.default_rng(1)
    files = {f"cifar-10-batches-py/data_batch_{i}": _batch(rng, 2, b"labels", 10)[0] for i in range(1, 6)}
    files["cifar-10-batches-py/test_batch"] = _batch(rng, 4, b"labels", 10)[0]
    return _tar_gz(files)


def tiny_imagenet_archive() -> bytes:
    """``tiny-imagenet-200.zip`` layout: wnids.txt, train/<wnid>/images/, val/images + val_annotations.txt."""
    rng = np.random.default_rng(2)
    wnids = ["n02", "n01"]

    def jpeg() -> bytes:
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(out, "JPEG")
        return out.getvalue()

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids) + "\n")
        for w in wnids:
            for k in range(2):
                zf.writestr(f"tiny-imagenet-200/train/{w}/images/{w}_{k}.JPEG", jpeg())
        lines = []
        for i in range(4):
            zf.writestr(f"tiny-imagenet-200/val/images/val_{i}.JPEG", jpeg())
            lines.append(f"val_{i}.JPEG\t{wnids[i % 2]}\t0\t0\t63\t63")
        zf.writestr("tiny-imagenet-200/val/val_annotations.txt", "\n".join(lines) + "\n")
    return buf.getvalue()


@pytest.fixture()
def server():
    with serve() as files:
        yield files


def _publish(server, monkeypatch, name: str, data: bytes, md5_of: bytes | None = None) -> str:
    """Serve ``data`` as dataset ``name``'s archive, recorded with the md5 of ``md5_of`` (default: data)."""
    path = f"/files/{ARCHIVES[name].filename}"
    server.files[path] = data
    md5 = hashlib.md5(data if md5_of is None else md5_of).hexdigest()
    monkeypatch.setitem(ARCHIVES, name, replace(ARCHIVES[name], url=server.url(path), md5=md5))
    return path


def _left_over(folder: Path) -> list[str]:
    """Files other than lock files (the temporary ones must never stay)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.endswith(".lock"))


def test_cifar100_is_downloaded_verified_extracted_and_loaded(server, tmp_path, monkeypatch):
    data, train_labels = cifar100_archive()
    path = _publish(server, monkeypatch, "cifar100", data)
    root = tmp_path / "data"
    train = create_dataset("cifar100", "train", root=root, transform=None, download=True)
    assert train.targets == train_labels and train.classes[7] == "c7"
    assert (root / "cifar-100-python" / "test").is_file()
    assert (root / "cifar-100-python.tar.gz").read_bytes() == data  # the verified archive is kept
    assert not [p for p in _left_over(root) if any(m in p for m in TEMP_MARKS)]
    assert len(create_dataset("cifar100", "test", root=root, download=True)) == 3
    assert server.requests[path] == 1  # found the second time, not fetched again


def test_download_goes_to_root_else_letkd_data_else_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("letkd.data.locate.CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("LETKD_DATA", raising=False)
    assert dl.download_base(None) == tmp_path / "cache"
    monkeypatch.setenv("LETKD_DATA", str(tmp_path / "store"))
    assert dl.download_base(None) == tmp_path / "store"
    assert dl.download_base(tmp_path / "given") == tmp_path / "given"


def test_tiny_imagenet_through_a_mirror(server, tmp_path, monkeypatch):
    data = tiny_imagenet_archive()
    server.files["/mirror/tiny-imagenet-200.zip"] = data
    md5 = hashlib.md5(data).hexdigest()
    monkeypatch.setitem(ARCHIVES, "tiny_imagenet", replace(ARCHIVES["tiny_imagenet"], md5=md5))
    monkeypatch.setenv(MIRROR_ENV, server.url("/mirror/"))
    val = create_dataset("tiny_imagenet", "val", root=tmp_path, transform=None, download=True)
    test = create_dataset("tiny_imagenet", "test", root=tmp_path, transform=None)
    assert (len(val), len(test)) == (2, 2) and val.classes == ["n01", "n02"]
    assert val[0][0].shape == (3, 64, 64)
    assert server.requests["/mirror/tiny-imagenet-200.zip"] == 1


def test_checksum_mismatch_is_refused_and_nothing_is_left(server, tmp_path, monkeypatch):
    data, _ = cifar100_archive()
    _publish(server, monkeypatch, "cifar100", data, md5_of=b"the published file")
    with pytest.raises(DownloadError, match=r"md5 [0-9a-f]{32}, expected .*refused and deleted"):
        create_dataset("cifar100", "train", root=tmp_path, download=True)
    assert _left_over(tmp_path) == []


def test_an_interrupted_transfer_is_retried_and_nothing_is_left(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("letkd.data.http.BACKOFF_SECONDS", 0.01)
    data, train_labels = cifar100_archive()
    path = _publish(server, monkeypatch, "cifar100", data)
    server.cut.add(path)  # the first transfer stops halfway: retried at once
    train = create_dataset("cifar100", "train", root=tmp_path, transform=None, download=True)
    assert train.targets == train_labels and server.requests[path] == 2
    assert "the transfer stopped after" in capsys.readouterr().err
    assert not [p for p in _left_over(tmp_path) if any(m in p for m in TEMP_MARKS)]


def test_without_retries_a_cut_transfer_fails_cleanly_and_a_rerun_recovers(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LETKD_DOWNLOAD_RETRIES", "0")
    data, train_labels = cifar100_archive()
    path = _publish(server, monkeypatch, "cifar100", data)
    server.cut.add(path)
    with pytest.raises(DownloadError, match=r"the transfer stopped after \d+ of \d+ bytes"):
        create_dataset("cifar100", "train", root=tmp_path / "d", download=True)
    assert not (tmp_path / "d").exists()  # the data folder made for it is gone again
    train = create_dataset("cifar100", "train", root=tmp_path / "d", transform=None, download=True)
    assert train.targets == train_labels and server.requests[path] == 2


def test_offline_error_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    url = dead_url("/kriz/cifar-10-python.tar.gz")
    monkeypatch.setitem(ARCHIVES, "cifar10", replace(ARCHIVES["cifar10"], url=url))
    with pytest.raises(DownloadError) as err:
        create_dataset("cifar10", "train", root=tmp_path, download=True)
    msg = str(err.value)
    assert url in msg and str(tmp_path / "cifar-10-python.tar.gz") in msg
    assert "no connection" in msg and ARCHIVES["cifar10"].md5 in msg and "\n" not in msg
    assert _left_over(tmp_path) == []
    with pytest.raises(DatasetNotFoundError) as err:  # without download: how to get it
        create_dataset("cifar10", "train", root=tmp_path)
    assert url in str(err.value) and "data.download=true" in str(err.value)


def test_imagenet_is_bring_your_own(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="bring-your-own.*licence"):
        create_dataset("imagenet", "train", root=tmp_path, download=True)
    with pytest.raises(DownloadError, match="not downloadable"):
        dl.download_dataset("imagenet", tmp_path)


def test_an_incomplete_folder_in_the_way_is_named_before_any_download(server, tmp_path, monkeypatch):
    data, _ = cifar100_archive()
    path = _publish(server, monkeypatch, "cifar100", data)
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"mine")
    with pytest.raises(DownloadError, match="cifar-100-python is in the way: .*missing test.*move it away"):
        create_dataset("cifar100", "train", root=tmp_path, download=True)
    assert (tmp_path / "cifar-100-python" / "train").read_bytes() == b"mine"
    assert _left_over(tmp_path) == ["cifar-100-python", "cifar-100-python/train"]
    assert server.requests[path] == 0  # nothing was downloaded that could not be extracted


def test_download_flags_of_train_run_and_eval(server, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_train(cfg, **kwargs):
        seen["train"] = cfg.data.download
        summary = {"best_top1": 1.0, "best_epoch": 1, "epochs": 2, "last_top1": 1.0, "wall_seconds": 0}
        return summary | {"run_dir": "x"}

    def fake_run(cfg, **kwargs):
        seen["run"] = cfg.data.download
        return {"status": "completed"}

    monkeypatch.setattr("letkd.pipeline.train_from_config", fake_train)
    monkeypatch.setattr("letkd.pipeline.run_pipeline", fake_run)
    assert main(["train", str(ROOT / "configs/digits/resnet8.yaml"), "--download"]) == 0
    assert main(["run", str(ROOT / "configs/digits/kd.yaml"), "--download"]) == 0
    assert seen == {"train": True, "run": True}
    main(["train", str(ROOT / "configs/digits/resnet8.yaml")])
    assert seen["train"] is False  # the default

    _publish(server, monkeypatch, "cifar10", cifar10_archive())
    weights = save_weights(create_model("resnet8", 10), tmp_path / "w.pt")
    args = ["eval", "--model", "resnet8", "--checkpoint", str(weights), "--data", "cifar10"]
    args += ["--root", str(tmp_path / "d"), "--workers", "0", "--device", "cpu", "--json"]
    capsys.readouterr()
    assert main(args) == 1  # not there, and not fetched without --download
    assert "data.download=true" in capsys.readouterr().err
    assert main([*args, "--download"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 4
