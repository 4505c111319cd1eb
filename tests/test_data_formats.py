"""Loaders for files in the official on-disk formats, generated small by the tests themselves."""

from __future__ import annotations

import gzip
import os
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from letkd.data import DatasetFormatError, DatasetNotFoundError, create_dataset
from letkd.data import fashion_mnist as fm
from letkd.data.safe_pickle import load_numpy_pickle
from letkd.data.tiny_imagenet import split_official_val

# ---------------------------------------------------------------- restricted unpickler


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_reads_numpy_dicts_of_every_protocol():
    batch = {b"data": np.arange(24, dtype=np.uint8).reshape(2, 12), b"labels": [3, 1], "s": np.float32(2.5)}
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        out = load_numpy_pickle(pickle.dumps(batch, protocol=protocol))
        assert np.array_equal(out[b"data"], batch[b"data"]) and out[b"labels"] == [3, 1] and out["s"] == 2.5


@pytest.mark.parametrize("payload", ["system", "eval", "class"])
def test_unpickler_refuses_code(tmp_path, payload):
    marker = tmp_path / "ran"
    if payload == "system":
        data = pickle.dumps({b"data": _RunsCode(marker)}, protocol=2)
    elif payload == "eval":
        data = b"cbuiltins\neval\n(Vprint(1)\ntR."
    else:
        data = pickle.dumps(_RunsCode, protocol=2)  # a class by reference
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        load_numpy_pickle(data)
    assert not marker.exists()


# ---------------------------------------------------------------- CIFAR


def _write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the official files are protocol-2 pickles


def _cifar_batch(rng, n: int, label_key: bytes, num_classes: int) -> tuple[dict, np.ndarray, list[int]]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).tolist()
    batch = {
        b"batch_label": b"testing batch",
        label_key: labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [y // 5 for y in labels]
    return batch, data, labels


@pytest.fixture()
def cifar10_root(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    train_data, train_labels = [], []
    for i in range(1, 6):
        batch, data, labels = _cifar_batch(rng, 3, b"labels", 10)
        _write_pickle(folder / f"data_batch_{i}", batch)
        train_data.append(data)
        train_labels += labels
    batch, test_data, test_labels = _cifar_batch(rng, 4, b"labels", 10)
    _write_pickle(folder / "test_batch", batch)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    _write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return tmp_path, np.concatenate(train_data), train_labels, test_data, test_labels


def test_cifar10_official_layout(cifar10_root):
    root, train_data, train_labels, test_data, test_labels = cifar10_root
    train = create_dataset("cifar10", "train", root=root, transform=None)
    test = create_dataset("cifar10", "test", root=root / "cifar-10-batches-py", transform=None)
    assert (len(train), len(test)) == (15, 4)
    assert train.targets == train_labels and test.targets == test_labels
    assert train.classes[:2] == ["airplane", "automobile"]
    # official row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    img, label = train[7]
    assert label == train_labels[7]
    assert torch.equal(img[1], torch.from_numpy(train_data[7, 1024:2048].reshape(32, 32)))
    x, _ = create_dataset("cifar10", "test", root=root)[2]
    expected = (
        torch.from_numpy(test_data[2].reshape(3, 32, 32)).double() / 255
        - torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.float64).view(3, 1, 1)
    ) / torch.tensor([0.2470, 0.2435, 0.2616], dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(x.double(), expected, atol=1e-5, rtol=0)
    aug, _ = create_dataset("cifar10", "train", root=root)[0]
    assert aug.shape == (3, 32, 32) and aug.dtype == torch.float32


def test_cifar100_official_layout_via_letkd_data(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    train_batch, train_data, train_labels = _cifar_batch(rng, 6, b"fine_labels", 100)
    test_batch, _, test_labels = _cifar_batch(rng, 2, b"fine_labels", 100)
    _write_pickle(folder / "train", train_batch)
    _write_pickle(folder / "test", test_batch)
    _write_pickle(
        folder / "meta",
        {
            b"fine_label_names": [f"c{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"g{i}".encode() for i in range(20)],
        },
    )
    monkeypatch.setenv("LETKD_DATA", str(tmp_path))
    train = create_dataset("cifar100", "train", transform=None)
    test = create_dataset("cifar100", "test")
    assert train.targets == train_labels and test.targets == test_labels  # fine labels, not coarse
    assert train.classes[99] == "c99"
    assert torch.equal(train.images, torch.from_numpy(train_data.reshape(-1, 3, 32, 32)))


def test_cifar_bad_files_give_clear_errors(cifar10_root, tmp_path):
    root = cifar10_root[0]
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _RunsCode(tmp_path / "ran")}, protocol=2))
    with pytest.raises(DatasetFormatError, match="data_batch_3.*refusing to load global"):
        create_dataset("cifar10", "train", root=root)
    assert not (tmp_path / "ran").exists()
    _write_pickle(folder / "data_batch_3", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetFormatError, match="uint8 \\(N, 3072\\)"):
        create_dataset("cifar10", "train", root=root)
    (folder / "data_batch_3").write_bytes(b"\x80\x02}q\x00(")  # truncated
    with pytest.raises(DatasetFormatError, match="not a valid CIFAR batch file"):
        create_dataset("cifar10", "train", root=root)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing data_batch_3"):
        create_dataset("cifar10", "train", root=root)


# ---------------------------------------------------------------- Tiny-ImageNet


def _save_jpeg(path: Path, rng, size=(64, 64), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(path, quality=95)


@pytest.fixture()
def tiny_root(tmp_path):
    """An official-layout tiny-imagenet-200 folder: 3 classes, 2 train and 5 val images per class."""
    rng = np.random.default_rng(2)
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n0300", "n0100", "n0200"]  # wnids.txt is not sorted in the official file either
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for k in range(2):
            _save_jpeg(root / "train" / w / "images" / f"{w}_{k}.JPEG", rng)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    names = [f"val_{i}.JPEG" for i in range(15)]
    owners = [wnids[i % 3] for i in range(15)]
    random.Random(0).shuffle(owners)
    lines = []
    for name, w in zip(names, owners):
        _save_jpeg(root / "val" / "images" / name, rng, mode="L" if name == "val_0.JPEG" else "RGB")
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root, sorted(wnids), dict(zip(names, owners))


def test_tiny_imagenet_val_test_split_is_deterministic_halves(tiny_root):
    root, classes, owner = tiny_root
    val = create_dataset("tiny_imagenet", "val", root=root.parent, transform=None)
    test = create_dataset("tiny_imagenet", "test", root=root, transform=None)
    for wnid in classes:
        names = sorted(n for n, w in owner.items() if w == wnid)  # string order: val_1, val_10, val_13, ...
        got_val = [Path(p).name for p, y in val.samples if y == classes.index(wnid)]
        got_test = [Path(p).name for p, y in test.samples if y == classes.index(wnid)]
        assert got_val == names[:2] and got_test == names[2:]
    assert val.classes == classes  # labels follow the sorted wnids
    assert val.targets == [y for _, y in val.samples]
    assert len(val) + len(test) == 15
    again = create_dataset("tiny_imagenet", "val", root=root, transform=None)
    assert again.samples == val.samples


def test_tiny_imagenet_images_and_transforms(tiny_root):
    root, classes, owner = tiny_root
    train = create_dataset("tiny_imagenet", "train", root=root, transform=None)
    assert len(train) == 6 and train.targets == [0, 0, 1, 1, 2, 2]
    assert Path(train.samples[0][0]).parent.parent.name == classes[0]
    img, _ = train[3]
    ref = torch.from_numpy(np.array(Image.open(train.samples[3][0]).convert("RGB"))).permute(2, 0, 1)
    assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
    assert (img.float() - ref.float()).abs().mean() < 2  # same JPEG, decoders may round differently
    grey = [
        i
        for i, (p, _) in enumerate(create_dataset("tiny_imagenet", "val", root=root).samples)
        if p.endswith("val_0.JPEG")
    ] + [
        i
        for i, (p, _) in enumerate(create_dataset("tiny_imagenet", "test", root=root).samples)
        if p.endswith("val_0.JPEG")
    ]
    assert len(grey) == 1
    for split in ("train", "val", "test"):
        x, y = create_dataset("tiny_imagenet", split, root=root)[0]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and isinstance(y, int)
    for split in ("val", "test"):  # the grey image is served as 3 equal channels
        ds = create_dataset("tiny_imagenet", split, root=root, transform=None)
        for i, (p, _) in enumerate(ds.samples):
            if p.endswith("val_0.JPEG"):
                x = ds[i][0]
                assert x.shape == (3, 64, 64) and torch.equal(x[0], x[1])


def test_tiny_imagenet_pre_split_layout(tmp_path):
    rng = np.random.default_rng(3)
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for w in ("b", "a"):
            for k in range(n):
                _save_jpeg(tmp_path / split / w / f"{k}.jpg", rng)
    test = create_dataset("tiny_imagenet", "test", root=tmp_path, transform=None)
    assert [Path(p).parent.name for p, _ in test.samples] == ["a", "b"] and test.targets == [0, 1]
    assert len(create_dataset("tiny_imagenet", "train", root=tmp_path)) == 4


def test_tiny_imagenet_bad_annotations(tiny_root):
    root, classes, _ = tiny_root
    annotations = root / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn9999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetFormatError, match="val_annotations.txt:1: expected"):
        split_official_val(annotations, classes)
    (root / "val" / "images" / "val_0.JPEG").unlink()
    annotations.write_text("val_0.JPEG\tn0100\t0\t0\t1\t1\nval_1.JPEG\tn0100\t0\t0\t1\t1\n")
    with pytest.raises(DatasetFormatError, match="1 files that do not exist"):
        create_dataset("tiny_imagenet", "val", root=root)


# ---------------------------------------------------------------- ImageNet folder


def test_imagenet_folder_layout(tmp_path):
    rng = np.random.default_rng(4)
    for cls in ("n02", "n01", "n03"):
        for k in range(2):
            _save_jpeg(tmp_path / "imagenet" / "train" / cls / f"{cls}_{k}.JPEG", rng, size=(40, 30))
    for cls in ("n01", "n03"):  # a class missing from val must not shift the labels
        _save_jpeg(tmp_path / "imagenet" / "val" / cls / f"ILSVRC2012_val_{cls}.JPEG", rng, size=(50, 60))
    train = create_dataset("imagenet", "train", root=tmp_path)
    val = create_dataset("imagenet", "val", root=tmp_path)
    test = create_dataset("imagenet", "test", root=tmp_path / "imagenet")
    assert train.classes == ["n01", "n02", "n03"] and train.targets == [0, 0, 1, 1, 2, 2]
    assert val.targets == [0, 2] and test.samples == val.samples
    x, y = train[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 0
    x, _ = val[1]
    assert x.shape == (3, 224, 224)


def test_imagenet_flat_val_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(5)
    _save_jpeg(tmp_path / "train" / "n01" / "a.JPEG", rng, size=(8, 8))
    _save_jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", rng, size=(8, 8))
    with pytest.raises(DatasetFormatError, match="sorted into class folders"):
        create_dataset("imagenet", "val", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="train \\(missing train/, val/\\)"):
        create_dataset("imagenet", "train", root=tmp_path / "train")


# ---------------------------------------------------------------- IDX (Fashion-MNIST format)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(folder: Path, n_train=5, n_test=3, compress=True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_parse(tmp_path, compress):
    arrays = _write_fashion(tmp_path / "FashionMNIST" / "raw", compress=compress)
    train = create_dataset("fashion_mnist", "train", root=tmp_path, transform=None)
    assert len(train) == 5 and train.targets == arrays["train-labels-idx1-ubyte"].tolist()
    assert torch.equal(train[4][0][2, 2:30, 2:30], torch.from_numpy(arrays["train-images-idx3-ubyte"][4]))
    assert len(create_dataset("fashion_mnist", "test", root=tmp_path)) == 3


def test_idx_corrupt_files_give_clear_errors(tmp_path):
    folder = tmp_path / "fashion-mnist"
    arrays = _write_fashion(folder, compress=False)
    good = _idx_bytes(arrays["train-images-idx3-ubyte"])
    path = folder / "train-images-idx3-ubyte"
    cases = {
        b"\x01" + good[1:]: "bad magic",
        good[:-1]: "expected",
        good[:2] + b"\x0d" + good[3:]: "unsupported IDX type",
        good[:6]: "truncated",
    }
    for data, message in cases.items():
        path.write_bytes(data)
        with pytest.raises(DatasetFormatError, match=message):
            fm.read_idx(path)
    gz = folder / "broken.gz"
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetFormatError, match="cannot read"):
        fm.read_idx(gz)
    path.write_bytes(_idx_bytes(np.zeros((4, 28, 28), np.uint8)))  # 4 images, 5 labels
    with pytest.raises(DatasetFormatError, match="labels for 4 images"):
        create_dataset("fashion_mnist", "train", root=tmp_path)


# ---------------------------------------------------------------- download=True (network calls replaced)


def test_download_fetches_missing_fashion_mnist(tmp_path, monkeypatch):
    import hashlib

    from torchvision.datasets import FashionMNIST

    from local_http import serve

    source = tmp_path / "source"
    arrays = _write_fashion(source)
    files = {f.name: f.read_bytes() for f in source.iterdir()}
    resources = [(name, hashlib.md5(data).hexdigest()) for name, data in sorted(files.items())]
    monkeypatch.setattr(FashionMNIST, "resources", resources)
    root = tmp_path / "store"
    with serve() as server:  # stands for torchvision's mirror
        server.files.update({f"/fm/{name}": data for name, data in files.items()})
        monkeypatch.setattr(FashionMNIST, "mirrors", [server.url("/fm/")])
        with pytest.raises(DatasetNotFoundError):
            create_dataset("fashion_mnist", "train", root=root)
        train = create_dataset("fashion_mnist", "train", root=root, download=True, transform=None)
        assert train.targets == arrays["train-labels-idx1-ubyte"].tolist()
        assert sum(server.requests.values()) == 4  # each file once, md5-checked
        assert (root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()
        create_dataset("fashion_mnist", "test", root=root, download=True)
        assert sum(server.requests.values()) == 4  # already there: nothing fetched again
