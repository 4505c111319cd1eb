"""One streaming teacher pass: samples independent of batching and workers, LDA from streamed statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from letkd.supervision.collect import RowRequest
from letkd.supervision.lda import class_scatter, fit_lda, lda_from_scatter
from letkd.supervision.sampling import bottom_k, row_priorities
from letkd.supervision.stream import collect_rows

CLASSES, IMAGES, GRID = 5, 90, 4


class Net(nn.Module):
    """conv (3→8) → ReLU → conv (8→6, stride 2): two taps, maps 8×8 and 4×4; class-dependent inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Conv2d(8, 6, 3, 2, 1)

    def forward(self, x):
        return self.b(self.a(x)).mean((2, 3))


class Images(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.labels = torch.randint(0, CLASSES, (IMAGES,), generator=g)
        self.images = torch.randn(IMAGES, 3, 8, 8, generator=g) + self.labels[:, None, None, None] * 0.5

    def __len__(self) -> int:
        return IMAGES

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def requests(folder, dtype="float32"):
    return [
        RowRequest("b", "b", False, folder / "all"),
        RowRequest("b", "b", False, folder / "rows", keep="rows", cap=200, dtype=dtype, seed=4),
        RowRequest(
            "b",
            "b",
            False,
            folder / "cls",
            keep="per_class",
            cap=40,
            dtype=dtype,
            seed=4,
            num_classes=CLASSES,
            stats=True,
        ),  # fmt: skip
        RowRequest("a", "a", True, folder / "pooled", keep="rows", cap=100, dtype=dtype, seed=4),
    ]


@pytest.fixture(scope="module")
def passes(tmp_path_factory):
    """The same requests collected with batch 7 and no workers, batch 16 with 2 workers, batch 16."""
    net, data = Net(), Images()
    runs = {}
    for name, batch, workers in (("b7", 7, 0), ("b16w2", 16, 2), ("b16", 16, 0)):
        folder = tmp_path_factory.mktemp(name)
        runs[name] = collect_rows(net, data, requests(folder), batch_size=batch, num_workers=workers,
                                  progress=False)  # fmt: skip
    return net, data, runs


def test_one_pass_fills_every_folder_with_the_seeded_samples(passes):
    net, data, runs = passes
    everything, rows, per_class, pooled = runs["b7"]
    assert everything.num_rows == everything.total_rows == IMAGES * GRID * GRID and not everything.sampled
    with torch.no_grad():
        maps = net.b(net.a(data.images))
    expected = maps.permute(0, 2, 3, 1).reshape(-1, 6).numpy()
    np.testing.assert_allclose(everything.rows, expected, rtol=1e-5, atol=1e-6)
    labels = np.repeat(data.labels.numpy(), GRID * GRID)
    np.testing.assert_array_equal(everything.labels, labels)
    priority = row_priorities(4, np.arange(IMAGES), GRID * GRID)
    index = np.arange(len(labels))
    np.testing.assert_array_equal(rows.index, bottom_k(priority, index, 0 * labels, 200))
    np.testing.assert_array_equal(per_class.index, bottom_k(priority, index, labels, 40))
    assert np.all(np.bincount(per_class.labels, minlength=CLASSES) == np.minimum(40, np.bincount(labels)))
    np.testing.assert_allclose(rows.rows, expected[rows.index], rtol=1e-5, atol=1e-6)
    assert pooled.grid == (4, 4) and pooled.dim == 8 and pooled.num_rows == 100  # 2x2-pooled 8x8 map


def test_samples_do_not_depend_on_batch_size_or_worker_count(passes):
    _, _, runs = passes
    for a, b in zip(runs["b7"], runs["b16w2"]):
        np.testing.assert_array_equal(a.index, b.index)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.rows, b.rows, rtol=1e-5, atol=1e-6)  # conv bits vary with the batch
    for a, b in zip(runs["b16w2"], runs["b16"]):  # same batches, other workers: the same bytes
        np.testing.assert_array_equal(np.asarray(a.rows), np.asarray(b.rows))


def test_streamed_lda_equals_lda_on_all_rows_in_memory(passes):
    _, _, runs = passes
    everything, _, per_class, _ = runs["b7"]
    streamed = per_class.scatter()
    in_memory = class_scatter(np.asarray(everything.rows), np.asarray(everything.labels), CLASSES)
    np.testing.assert_array_equal(streamed.counts, in_memory.counts)
    np.testing.assert_allclose(streamed.means, in_memory.means, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(streamed.within, in_memory.within, rtol=1e-9, atol=1e-9)
    scalings, xbar = lda_from_scatter(streamed)
    ref_scalings, ref_xbar = fit_lda(np.asarray(everything.rows), np.asarray(everything.labels), CLASSES)
    np.testing.assert_allclose(xbar, ref_xbar, rtol=1e-9, atol=1e-9)
    signs = np.sign((scalings * ref_scalings).sum(0))
    np.testing.assert_allclose(scalings * signs, ref_scalings, rtol=1e-6, atol=1e-8)


def test_float16_samples_hold_the_same_rows_rounded(tmp_path):
    net, data = Net(), Images()
    full = collect_rows(net, data, requests(tmp_path / "f32"), batch_size=16, progress=False)
    half = collect_rows(net, data, requests(tmp_path / "f16", "float16"), batch_size=16, progress=False)
    assert half[0].dtype == "float32"  # every row: stored as before
    for a, b in zip(full[1:], half[1:]):
        assert b.dtype == "float16" and (b.path / "rows.f16").stat().st_size == b.num_rows * b.dim * 2
        np.testing.assert_array_equal(a.index, b.index)
        np.testing.assert_array_equal(np.asarray(a.rows).astype(np.float16), b.rows)
