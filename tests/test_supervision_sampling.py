"""Seeded row samples: a property of the rows alone (hash priorities), kept in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from letkd.supervision.sampling import (
    MAX_PRIORITY,
    SamplePool,
    bottom_k,
    inclusion_threshold,
    row_priorities,
)


def test_priorities_hash_seed_image_and_location():
    a = row_priorities(0, np.arange(5), 4)
    assert a.dtype == np.uint64 and a.shape == (20,) and len(set(a.tolist())) == 20
    # the priority of a row does not depend on which other images are in the call
    np.testing.assert_array_equal(row_priorities(0, np.array([3, 4]), 4), a[12:])
    assert not np.array_equal(row_priorities(1, np.arange(5), 4), a)
    spread = row_priorities(7, np.arange(20000), 1) / 2.0**64
    assert abs(spread.mean() - 0.5) < 0.01 and abs((spread < 0.1).mean() - 0.1) < 0.01  # uniform


def test_bottom_k_is_the_k_smallest_per_group_ties_by_index():
    rng = np.random.default_rng(0)
    priority = rng.integers(0, 50, 300).astype(np.uint64)  # many ties
    index = rng.permutation(300).astype(np.int64)
    group = rng.integers(0, 4, 300)
    kept = bottom_k(priority, index, group, 7)
    assert np.all(np.diff(kept) > 0)
    for g in range(4):
        members = np.flatnonzero(group == g)
        expect = members[np.lexsort((index[members], priority[members]))[:7]]
        np.testing.assert_array_equal(np.sort(expect), kept[group[kept] == g])


def stream(pool: SamplePool, rows, priority, index, labels, order, batch):
    for lo in range(0, len(order), batch):
        sel = order[lo : lo + batch]
        pool.add(rows[sel], priority[sel], index[sel], labels[sel])
    return pool.finish()


@pytest.mark.parametrize("per_label", [False, True])
def test_pool_equals_the_sample_of_all_rows_for_any_order_batch_and_split(per_label):
    rng = np.random.default_rng(1)
    n, dim, classes, k = 5000, 3, 6, 40
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    labels = np.repeat(np.arange(classes), n // classes + 1)[:n]
    index = np.arange(n)
    priority = row_priorities(3, np.arange(n // 10), 10)
    groups = labels if per_label else np.zeros(n, dtype=np.int64)
    expect = bottom_k(priority, index, groups, k)

    def pool(max_rows=n, threshold=MAX_PRIORITY):
        return SamplePool(k, classes if per_label else 1, dim, np.float32, max_rows=max_rows, batch_rows=64,
                          per_label=per_label, threshold=threshold)  # fmt: skip

    straight = stream(pool(), rows, priority, index, labels, np.arange(n), 64)
    np.testing.assert_array_equal(straight.index, expect)
    np.testing.assert_array_equal(straight.rows, rows[expect])
    np.testing.assert_array_equal(straight.label, labels[expect])
    shuffled = stream(pool(), rows, priority, index, labels, rng.permutation(n), 17)  # any order, any batch
    np.testing.assert_array_equal(shuffled.index, expect)
    np.testing.assert_array_equal(shuffled.rows, rows[expect])
    # shards: the sample of the union is the sample of the shards' samples
    parts = [stream(pool(), rows, priority, index, labels, np.arange(lo, lo + n // 4), 50)
             for lo in range(0, n, n // 4)]  # fmt: skip
    merged = bottom_k(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("priority", "index")),
                      np.concatenate([p.label if per_label else 0 * p.label for p in parts]), k)  # fmt: skip
    np.testing.assert_array_equal(np.concatenate([p.index for p in parts])[merged], expect)
    if not per_label:  # a threshold from the row count only drops rows that cannot be in the sample
        thresholded = pool(threshold=inclusion_threshold(k, n))
        kept = stream(thresholded, rows, priority, index, labels, np.arange(n), 64)
        np.testing.assert_array_equal(kept.index, expect)
        assert thresholded.compactions == 1  # only the final one: the buffer never filled up


def test_pool_memory_stays_bounded_and_float16_overflow_is_refused():
    k, n = 100, 20000
    pool = SamplePool(
        k, 1, 2, np.float16, max_rows=n, batch_rows=500, per_label=False, what="features at 'x'"
    )
    assert pool.capacity == k + 500
    priority = row_priorities(0, np.arange(n), 1)
    for lo in range(0, n, 500):
        pool.add(np.ones((500, 2), np.float32), priority[lo : lo + 500], np.arange(lo, lo + 500),
                 np.zeros(500, dtype=np.int64))  # fmt: skip
        assert pool.size <= pool.capacity
    assert pool.compactions > 1 and len(pool.finish().index) == k
    fresh = SamplePool(
        k, 1, 2, np.float16, max_rows=n, batch_rows=500, per_label=False, what="features at 'x'"
    )
    with pytest.raises(ValueError, match=r"features at 'x' reach \|x\| = 7e\+04, beyond float16's range.*"
                                         r"sample_dtype=float32"):  # fmt: skip
        fresh.add(np.array([[7e4, 0.0]], np.float32), np.zeros(1, np.uint64), np.zeros(1, np.int64),
                  np.zeros(1, np.int64))  # fmt: skip
