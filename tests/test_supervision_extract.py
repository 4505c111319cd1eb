"""Feature extraction to row files: (b, h, w) order, labels, pooling, seeded subsampling, bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from letkd.supervision.extract import RowFile, extract_rows
from letkd.supervision.kmeans import row_chunks
from letkd.supervision.sampling import bottom_k, row_priorities


class TinyNet(nn.Module):
    """conv (3→8, 8×8) → ReLU → conv (8→6, stride 2 → 4×4) → head; tap names like the zoo's."""

    taps = {"intermediate": "body.0", "penultimate": "body"}

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 6, 3, 2, 1)
        )
        self.head = nn.Linear(6, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.head(self.body(x).mean((2, 3)))


class RandomImages(Dataset):
    def __init__(self, n: int, size: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, 4, (n,), generator=g).tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def _expected_rows(model: nn.Module, data: RandomImages, pool: bool) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        feats = model.body(data.images)
    if pool:
        feats = torch.nn.functional.avg_pool2d(feats, 2)
    b, d, h, w = feats.shape
    rows = feats.permute(0, 2, 3, 1).reshape(-1, d).numpy()
    return rows, np.repeat(np.array(data.labels), h * w)


@pytest.mark.parametrize("pool", [False, True])
def test_rows_in_bhw_order_with_image_labels(tmp_path, pool):
    model, data = TinyNet(), RandomImages(11)
    model.train()
    out = extract_rows(
        model, data, "penultimate", tmp_path / "rows", pool2x2=pool, batch_size=4, progress=False
    )
    assert model.training, "the teacher's mode is restored"
    rows, labels = _expected_rows(model.eval(), data, pool)
    assert out.grid == ((2, 2) if pool else (4, 4)) and out.dim == 6 and out.num_rows == len(rows)
    np.testing.assert_allclose(out.rows, rows, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.labels, labels)
    assert out.meta["module_path"] == "body" and out.meta["pool2x2"] is pool
    reopened = RowFile.open(tmp_path / "rows")
    np.testing.assert_array_equal(reopened.rows, out.rows)
    chunks = list(row_chunks(reopened.rows, 7))  # pages of the memmap are released after each chunk
    assert [lo for lo, _ in chunks] == list(range(0, len(rows), 7))
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), reopened.rows)
    assert not model.body._forward_hooks, "no hook is left behind"


def test_forward_stops_at_the_tap(tmp_path):
    model = TinyNet()
    model.head = None  # running past the tap would fail
    out = extract_rows(model, RandomImages(3), "body.0", tmp_path / "r", batch_size=2, progress=False)
    assert out.dim == 8 and out.grid == (8, 8)


def test_seeded_subsample_keeps_order(tmp_path):
    model, data = TinyNet(), RandomImages(10)
    full, _ = _expected_rows(model.eval(), data, pool=False)  # 160 rows
    a = extract_rows(model, data, "body", tmp_path / "a", batch_size=3, max_rows=37, seed=5, progress=False)
    b = extract_rows(model, data, "body", tmp_path / "b", batch_size=7, max_rows=37, seed=5, progress=False)
    keep = bottom_k(row_priorities(5, np.arange(10), 16), np.arange(160), np.zeros(160, dtype=np.int64), 37)
    assert a.num_rows == 37 and a.total_rows == 160 and a.sampled and np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(a.index, keep)
    np.testing.assert_allclose(a.rows, full[keep], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.index, b.index)  # the same rows for any batch size
    np.testing.assert_allclose(a.rows, b.rows, rtol=1e-5, atol=1e-6)  # (the conv's bits depend on the batch)
    c = extract_rows(model, data, "body", tmp_path / "c", batch_size=3, max_rows=37, seed=6, progress=False)
    assert not np.array_equal(a.index, c.index)
    everything = extract_rows(model, data, "body", tmp_path / "d", max_rows=500, progress=False)
    assert not everything.sampled and everything.dtype == "float32" and everything.num_rows == 160


def test_memory_is_bounded_by_the_batch(tmp_path):
    model, data = TinyNet().eval(), RandomImages(1000)  # 1000·16 rows × 6 dims = 384 kB of rows
    extract_rows(model, RandomImages(2), "body", tmp_path / "warm", progress=False)  # imports, caches
    row_bytes = 1000 * 16 * 6 * 4
    tracemalloc.start()
    try:
        out = extract_rows(model, data, "body", tmp_path / "rows", batch_size=50, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "rows" / "rows.f32").stat().st_size == row_bytes
    assert out.num_rows == 16000
    assert peak < row_bytes / 4, f"extraction held {peak} bytes for {row_bytes} bytes of rows"


class BrokenImages(RandomImages):
    def __getitem__(self, i):
        if i == 5:
            raise OSError("unreadable image 5")
        return super().__getitem__(i)


def test_failed_extraction_leaves_no_folder(tmp_path):
    from letkd.taps import UnknownTapError

    with pytest.raises(UnknownTapError):
        extract_rows(TinyNet(), RandomImages(3), "no.such.layer", tmp_path / "rows", progress=False)
    with pytest.raises(OSError, match="unreadable"):
        extract_rows(TinyNet(), BrokenImages(8), "body", tmp_path / "rows", batch_size=2, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        RowFile.open(tmp_path / "rows")


def test_a_teacher_with_non_finite_features_stops_extraction(tmp_path):
    from letkd.supervision.errors import NonFiniteFeaturesError

    model = TinyNet()
    with torch.no_grad():
        model.body[2].bias[3] = float("nan")  # a broken checkpoint
    with pytest.raises(NonFiniteFeaturesError, match=r"non-finite features .* at tap 'body' \(images 0-3\)"):
        extract_rows(model, RandomImages(8), "body", tmp_path / "rows", batch_size=4, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_open_checked_refuses_damaged_folders_and_check_finite_names_the_tap(tmp_path):
    from letkd.supervision.errors import CorruptRowsError, NonFiniteFeaturesError
    from letkd.supervision.extract import check_finite, open_checked

    assert open_checked(tmp_path / "rows") is None
    done = extract_rows(TinyNet(), RandomImages(4), "body", tmp_path / "rows", progress=False)
    assert open_checked(done.path).num_rows == done.num_rows == 64
    check_finite(done, "penultimate")
    labels = done.path / "labels.i64"
    labels.write_bytes(labels.read_bytes() + b"\0")
    with pytest.raises(CorruptRowsError, match="labels.i64 is too long"):
        open_checked(done.path)
    labels.write_bytes(labels.read_bytes()[:-9])
    with pytest.raises(CorruptRowsError, match=r"labels.i64 is truncated \(504 bytes, meta.json says 64"):
        open_checked(done.path)
    (done.path / "meta.json").unlink()
    with pytest.raises(CorruptRowsError, match="meta.json missing"):
        open_checked(done.path)

    again = extract_rows(TinyNet(), RandomImages(4), "body", tmp_path / "rows2", progress=False)
    rows = np.memmap(again.path / "rows.f32", dtype=np.float32, mode="r+")
    rows[[3, 70]] = [np.inf, np.nan]
    rows.flush()
    del rows
    with pytest.raises(NonFiniteFeaturesError, match=r"at tap 'penultimate' \(2 of 64 rows in "):
        check_finite(RowFile.open(again.path), "penultimate")
