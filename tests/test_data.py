"""Dataset registry, Fashion-MNIST (real files), digits, transforms and subsets."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from letkd.data import (
    DatasetNotFoundError,
    LabeledSubset,
    create_dataset,
    dataset_info,
    get_transform,
    list_datasets,
    subset,
)
from letkd.data import fashion_mnist as fm
from letkd.data.transforms import NormalizeImage, RandomCropFlipNormalize

# ---------------------------------------------------------------- registry


def test_list_and_info():
    assert list_datasets() == ["cifar10", "cifar100", "digits", "fashion_mnist", "imagenet", "tiny_imagenet"]
    info = dataset_info("cifar100")
    assert (info.num_classes, info.image_size, info.channels) == (100, 32, 3)
    assert info.mean == (0.5071, 0.4867, 0.4408) and info.std == (0.2675, 0.2565, 0.2761)
    assert dataset_info("tiny_imagenet").splits == ("train", "val", "test")
    assert dataset_info("imagenet").image_size == 224
    assert dataset_info("fashion_mnist").splits == ("train", "test")


def test_unknown_name_split_and_transform_are_clear_errors():
    with pytest.raises(ValueError, match="known datasets: cifar10, cifar100, digits, fashion_mnist"):
        create_dataset("mnist", "train")
    with pytest.raises(ValueError, match="known datasets.*imports:"):
        dataset_info("svhn")
    with pytest.raises(ValueError, match="no split 'val'; valid splits: train, test"):
        create_dataset("digits", "val")
    with pytest.raises(ValueError, match="transform must be"):
        create_dataset("digits", "train", transform="augment")
    with pytest.raises(TypeError):
        create_dataset("digits", "train", transform=3)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        get_transform("digits", "val")


def test_transform_selection():
    assert isinstance(create_dataset("digits", "train").transform, RandomCropFlipNormalize)
    assert isinstance(create_dataset("digits", "test").transform, NormalizeImage)
    assert isinstance(create_dataset("digits", "train", transform="test").transform, NormalizeImage)
    assert create_dataset("digits", "train", transform=None).transform is None
    marker = torch.zeros(3, 1, 1)
    ds = create_dataset("digits", "test", transform=lambda img: marker)
    assert ds[0][0] is marker


# ---------------------------------------------------------------- transforms


def test_normalize_matches_torchvision():
    img = torch.randint(0, 256, (3, 9, 7), dtype=torch.uint8)
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    ref = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])(img)
    out = NormalizeImage(mean, std)(img)
    assert out.dtype == torch.float32 and out.shape == (3, 9, 7)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_crop_flip_draws_every_torchvision_crop(mode):
    """Each output is one of torchvision's padded crops (flipped or not); all of them occur."""
    img = torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8)
    norm = NormalizeImage((0.5,) * 3, (0.25,) * 3)
    padded = TF.pad(img, [2], padding_mode=mode)
    candidates = []
    for i in range(5):
        for j in range(5):
            crop = padded[:, i : i + 6, j : j + 6]
            candidates += [norm(crop), norm(crop.flip(-1))]
    stacked = torch.stack(candidates)  # (50, 3, 6, 6)
    transform = RandomCropFlipNormalize(6, 2, (0.5,) * 3, (0.25,) * 3, padding_mode=mode)
    seen = set()
    for _ in range(800):
        out = transform(img)
        match = (stacked - out).abs().flatten(1).amax(1) < 1e-6
        assert match.any(), "output is not a crop of the padded image"
        seen.update(torch.nonzero(match).flatten().tolist())
    assert len(seen) == 50  # random image: all 25 offsets x 2 flips are distinct and drawn


def test_crop_without_flip_never_flips():
    img = torch.arange(16, dtype=torch.uint8).view(1, 4, 4).expand(3, 4, 4)
    transform = RandomCropFlipNormalize(4, 0, (0.0,) * 3, (1 / 255,) * 3, flip=False)
    for _ in range(50):
        assert torch.equal(transform(img), img.float())


# ---------------------------------------------------------------- digits


def _pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and std of all pixels / 255 of grey uint8 images (N, 1, H, W), exactly, from a value histogram."""
    counts = torch.bincount(images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum()
    mean = (counts * values).sum() / n
    var = (counts * (values - mean) ** 2).sum() / (n - 1)
    return mean.item(), var.sqrt().item()


def test_digits_split_sizes_stratified_and_deterministic():
    from sklearn.datasets import load_digits

    train, test = create_dataset("digits", "train", transform=None), create_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    y = load_digits().target
    expected = np.bincount(y) * 360 / len(y)
    assert np.abs(np.bincount(test.targets, minlength=10) - expected).max() <= 1
    again = create_dataset("digits", "train", transform=None)
    assert again.targets == train.targets and torch.equal(again.images, train.images)
    x, label = test[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(label, int)


def test_digits_images_are_upsampled_sklearn_images():
    from sklearn.datasets import load_digits

    from letkd.data.digits import split_indices

    bunch = load_digits()
    idx = split_indices("test")
    assert len(set(idx) | set(split_indices("train"))) == 1797
    assert not set(idx) & set(split_indices("train"))
    ds = create_dataset("digits", "test", transform=None)
    small = torch.tensor(bunch.images[idx[:20]] / 16.0, dtype=torch.float32).unsqueeze(1)
    ref = F.interpolate(small, size=32, mode="bilinear", align_corners=False) * 255
    got = torch.stack([ds[i][0] for i in range(20)]).float()
    assert torch.equal(got[:, 0], got[:, 1]) and torch.equal(got[:, 0], got[:, 2])
    assert (got[:, :1] - ref).abs().max() <= 0.5 + 1e-4
    assert ds.targets[:20] == bunch.target[idx[:20]].tolist()


def test_digits_stats_constants():
    mean, std = _pixel_stats(create_dataset("digits", "train", transform=None).images)
    info = dataset_info("digits")
    assert abs(mean - info.mean[0]) < 1e-4 and abs(std - info.std[0]) < 1e-4


# ---------------------------------------------------------------- subset


def test_subset_seeded_keeps_targets():
    ds = create_dataset("digits", "train")
    a, b, c = subset(ds, 100, seed=1), subset(ds, 100, seed=1), subset(ds, 100, seed=2)
    assert isinstance(a, LabeledSubset) and len(a) == 100
    assert a.indices == b.indices and a.indices != c.indices
    assert a.indices == sorted(set(a.indices))
    assert a.targets == [ds.targets[i] for i in a.indices]
    assert a[3][1] == ds.targets[a.indices[3]]
    assert subset(ds, 10, seed=None).indices == list(range(10))
    assert len(subset(ds, 10**6, seed=0)) == len(ds)
    with pytest.raises(ValueError):
        subset(ds, 0, seed=0)


# ---------------------------------------------------------------- locating / errors


def test_missing_dataset_error_names_places_and_how_to_get(tmp_path, monkeypatch):
    monkeypatch.setenv("LETKD_DATA", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.setattr("letkd.data.locate.CACHE_DIR", tmp_path / "cache")
    with pytest.raises(DatasetNotFoundError) as err:
        create_dataset("fashion_mnist", "train")
    msg = str(err.value)
    for place in ("store/fashion-mnist", "nowhere", "cache"):
        assert place in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "zalandoresearch" in msg
    assert isinstance(err.value, FileNotFoundError)
    copy = pickle.loads(pickle.dumps(err.value))
    assert str(copy) == msg

    (tmp_path / "store" / "fashion-mnist").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="missing train-images-idx3-ubyte"):
        create_dataset("fashion_mnist", "train")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "given")):
        create_dataset("cifar100", "train", root=tmp_path / "given")


# ---------------------------------------------------------------- Fashion-MNIST (real files)


@pytest.fixture(scope="session")
def fashion():
    try:
        folder = fm.find_folder()
    except DatasetNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST not installed: {exc}")
    train = create_dataset("fashion_mnist", "train", transform=None)
    test = create_dataset("fashion_mnist", "test", transform=None)
    return folder, train, test


def _independent_idx(path: Path, header: int) -> np.ndarray:
    raw = path.read_bytes()
    raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
    return np.frombuffer(raw[header:], dtype=np.uint8)


def test_fashion_sizes_labels_and_pixels(fashion):
    folder, train, test = fashion
    assert (len(train), len(test)) == (60_000, 10_000)
    assert np.bincount(train.targets).tolist() == [6000] * 10
    assert np.bincount(test.targets).tolist() == [1000] * 10
    for ds, stem in ((train, "train"), (test, "t10k")):
        labels = _independent_idx(fm._resolve(folder, f"{stem}-labels-idx1-ubyte"), 8)
        assert ds.targets == labels.tolist()
        pixels = _independent_idx(fm._resolve(folder, f"{stem}-images-idx3-ubyte"), 16).reshape(-1, 28, 28)
        assert torch.equal(ds.images[:, 0, 2:30, 2:30], torch.from_numpy(pixels.copy()))
    img, label = train[123]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8 and label == train.targets[123]
    assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert train.images[:, :, border].max() == 0 and test.images[:, :, border].max() == 0


def test_fashion_stats_constants_and_normalised_sample(fashion):
    _, train, _ = fashion
    mean, std = _pixel_stats(train.images)
    info = dataset_info("fashion_mnist")
    assert abs(mean - info.mean[0]) < 1e-4 and abs(std - info.std[0]) < 1e-4
    normed = create_dataset("fashion_mnist", "train", transform="test")
    idx = torch.randperm(len(normed))[:2000].tolist()
    sample = torch.stack([normed[i][0] for i in idx])
    assert abs(sample.mean().item()) < 0.05 and abs(sample.std().item() - 1) < 0.05
    expected = (train[idx[0]][0].double() / 255 - info.mean[0]) / info.std[0]
    torch.testing.assert_close(sample[0].double(), expected, atol=1e-5, rtol=0)


def test_fashion_train_transform_augments(fashion):
    aug = create_dataset("fashion_mnist", "train")
    outs = torch.stack([aug[7][0] for _ in range(20)])
    assert outs.shape == (20, 3, 32, 32) and outs.dtype == torch.float32
    assert (outs - outs[0]).abs().amax() > 0  # random crops/flips differ


def test_fashion_found_through_letkd_data(fashion, tmp_path, monkeypatch):
    folder, _, _ = fashion
    (tmp_path / "fashion-mnist").symlink_to(folder.resolve())
    monkeypatch.setenv("LETKD_DATA", str(tmp_path))
    assert fm.find_folder() == tmp_path / "fashion-mnist"
