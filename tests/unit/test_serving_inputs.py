"""The service's input assembly: closed buckets turned into the network's inputs a batch at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from artefacts import SMALL, export_meta

from model.export import export_model
from model.features import calendar_features
from model.network import build_network
from state.buckets import bucket_start
from state.ledger import RealisedScore
from state.partition import ClosedBucket
from stream.inference import Predictor
from stream.inputs import ModelInputs, PendingInputs, StaticTable, inputs_for

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


def test_slices_asked_for_in_parts_carry_calendar_and_prices_that_join_to_the_whole():
    # Two partitions closing the same bucket share one calendar; a third bucket has its own.
    parts = [_closed(100, 5, 0), _closed(100, 3, 1), _closed(107, 6, 2)]
    statics = _statics(parts)
    pending = PendingInputs(parts, "D", H, statics, split_past=True)
    expected = np.stack([row[2] for part in parts for row in _expected_rows(part, statics)])
    assert not PendingInputs(parts, "D", H, statics).slice(2, 8).split  # joined unless asked
    same_bucket = pending.slice(2, 8)
    assert same_bucket.split and same_bucket.past_cov is None
    assert same_bucket.past_calendar.shape == (L, expected.shape[2] - 1)
    np.testing.assert_allclose(same_bucket.log_price, expected[2:8, :, -1], rtol=1e-6)
    np.testing.assert_allclose(same_bucket.past_covariates(), expected[2:8], rtol=1e-6)
    np.testing.assert_allclose(same_bucket.slice(1, 4).past_covariates(), expected[3:6], rtol=1e-6)
    # Across two buckets the calendars differ, so the batch carries its past covariates whole.
    across = pending.slice(6, 11)
    assert not across.split and across.past_calendar is None
    np.testing.assert_allclose(across.past_cov, expected[6:11], rtol=1e-6)


def test_inputs_without_past_covariates_or_both_their_parts_are_refused():
    whole = inputs_for(_closed(100, 3, 0), "D", H, StaticTable((), 64), split_past=True)
    with pytest.raises(ValueError, match="past_calendar and log_price"):
        ModelInputs(
            whole.target,
            whole.observed,
            None,
            whole.future_cov,
            whole.static,
            whole.feedback,
            past_calendar=whole.past_calendar,
        )


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
        ),
    ],
)
def test_the_predictor_joins_calendar_and_prices_as_the_whole_on_cpu_and_cuda(tmp_path, device):
    args = SMALL
    torch.manual_seed(0)
    path = tmp_path / "small.pt"
    export_model(build_network(args).eval(), args, path, export_meta())
    predictor = Predictor.load(path, device)
    rng = np.random.default_rng(4)
    b, length, calendar = 9, args.context_length, args.n_past_cov - 1
    parts = ModelInputs(
        target=rng.poisson(3.0, size=(b, length)).astype(np.float32),
        observed=np.ones((b, length), dtype=np.float32),
        past_cov=None,
        future_cov=rng.normal(size=(b, args.horizons, args.n_future_cov)).astype(np.float32),
        static=rng.integers(0, args.static_vocab, size=(b, args.n_static)),
        feedback=rng.normal(size=(b, args.n_feedback)).astype(np.float32),
        past_calendar=rng.normal(size=(length, calendar)).astype(np.float32),
        log_price=rng.uniform(0, 2, size=(b, length)).astype(np.float32),
    )
    whole = ModelInputs(*parts.arrays())
    assert not whole.split
    try:
        np.testing.assert_array_equal(predictor.predict(parts), predictor.predict(whole))
        np.testing.assert_array_equal(
            predictor.predict(parts.slice(3, 7)), predictor.predict(whole.slice(3, 7))
        )
    finally:
        predictor.close()
