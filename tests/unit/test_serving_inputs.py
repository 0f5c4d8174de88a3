"""The service's input assembly: closed buckets turned into the network's inputs a batch at a time."""

from __future__ import annotations

import numpy as np
import pytest

from model.features import calendar_features
from state.buckets import bucket_start
from state.ledger import RealisedScore
from state.partition import ClosedBucket
from stream.inputs import PendingInputs, StaticTable, inputs_for

L, H, F = 12, 4, 3


def _closed(bucket: int, n: int, seed: int) -> ClosedBucket:
    rng = np.random.default_rng(seed)
    price = rng.uniform(0.5, 9.0, size=(n, L)).astype(np.float32)
    price[:, :2] = np.nan  # before the first price
    return ClosedBucket(
        bucket=bucket,
        rows=np.arange(n, dtype=np.int64),
        item_ids=np.array([f"b{bucket}-{seed}-{i}" for i in range(n)], dtype=object),
        target=rng.poisson(3.0, size=(n, L)).astype(np.float32),
        observed=(rng.random((n, L)) > 0.2).astype(np.float32),
        price=price,
        feedback=rng.normal(size=(n, F)).astype(np.float32),
        window_buckets=np.arange(bucket - L + 1, bucket + 1, dtype=np.int64),
        score=RealisedScore(np.zeros(3), 0.0, 0, 0),
    )


def _expected_rows(closed: ClosedBucket, statics: StaticTable) -> list[tuple[np.ndarray, ...]]:
    """Each item's inputs written out from the contract, one item at a time."""
    past_cal = calendar_features(bucket_start(closed.window_buckets, "D"))
    future = closed.bucket + 1 + np.arange(H)
    future_cal = calendar_features(bucket_start(future, "D"))
    rows = []
    for i in range(closed.rows.size):
        with np.errstate(invalid="ignore"):
            price = np.nan_to_num(np.log1p(np.maximum(closed.price[i], 0.0)), nan=0.0)
        past = np.concatenate([past_cal, price[:, None]], axis=1).astype(np.float32)
        rows.append(
            (
                closed.target[i],
                closed.observed[i],
                past,
                future_cal.astype(np.float32),
                statics.ids_for(np.array([closed.item_ids[i]], dtype=object))[0],
                closed.feedback[i],
            )
        )
    return rows


def _statics(parts: list[ClosedBucket]) -> StaticTable:
    statics = StaticTable(("store",), 64)
    for part in parts:
        for k, item in enumerate(part.item_ids[::2]):
            statics.update(item, {"store": k % 5})
    return statics


def test_any_slice_holds_exactly_the_rows_of_the_closed_buckets_it_spans():
    # Two partitions closing the same bucket, a third closing another one (its own calendar).
    parts = [_closed(100, 5, 0), _closed(100, 3, 1), _closed(107, 6, 2)]
    statics = _statics(parts)
    pending = PendingInputs(parts, "D", H, statics)
    assert pending.rows == 14
    expected = [row for part in parts for row in _expected_rows(part, statics)]
    for start, stop in [(0, 14), (0, 4), (3, 9), (5, 8), (7, 14), (13, 14), (6, 6)]:
        got = pending.slice(start, stop)
        assert got.rows == stop - start
        for field, column in enumerate(got.arrays()):
            want = [row[field] for row in expected[start:stop]]
            if want:
                np.testing.assert_allclose(column, np.stack(want), rtol=1e-6, err_msg=f"{start}:{stop}")
            assert column.dtype == (np.int64 if field == 4 else np.float32)
            assert column.flags["C_CONTIGUOUS"]


def test_a_closed_bucket_without_items_is_skipped():
    parts = [_closed(100, 4, 0), _closed(100, 0, 1), _closed(100, 2, 2)]
    statics = _statics(parts)
    pending = PendingInputs(parts, "D", H, statics)
    whole = pending.slice(0, 6)
    np.testing.assert_array_equal(whole.target, np.concatenate([parts[0].target, parts[2].target]))
    assert pending.slice(4, 4).rows == 0


def test_the_whole_slice_is_what_inputs_for_gives_one_closed_bucket():
    part = _closed(120, 7, 3)
    statics = _statics([part])
    one = inputs_for(part, "D", H, statics)
    sliced = PendingInputs([part], "D", H, statics).slice(2, 7)
    for a, b in zip(one.slice(2, 7).arrays(), sliced.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_slice_outside_the_rows_is_refused():
    pending = PendingInputs([_closed(100, 3, 0)], "D", H, StaticTable((), 64))
    for start, stop in [(-1, 2), (2, 1), (0, 4)]:
        with pytest.raises(ValueError, match="outside"):
            pending.slice(start, stop)


def test_assembly_leaves_the_closed_buckets_prices_as_they_were():
    part = _closed(100, 4, 0)
    before = part.price.copy()
    PendingInputs([part], "D", H, StaticTable((), 64)).slice(0, 4)
    np.testing.assert_array_equal(part.price, before)


def test_nothing_to_assemble_is_refused():
    with pytest.raises(ValueError, match="no closed buckets"):
        PendingInputs([], "D", H, StaticTable((), 64))
