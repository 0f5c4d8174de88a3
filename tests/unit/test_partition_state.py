"""Bucketing, watermarks, zero-fill and lateness of one partition's state."""

from __future__ import annotations

import numpy as np
import pytest

from state.config import StateConfig
from state.partition import PartitionState

DAY = 86_400_000
HOUR = 3_600_000


def _cfg(**kw) -> StateConfig:
    base = dict(freq="D", context_length=4, horizons=2, quantiles=(0.1, 0.5, 0.9), allowed_lateness_ms=HOUR)
    base.update(kw)
    return StateConfig(**base)


def _ingest(state: PartitionState, events: list[tuple[str, int, float, float]]) -> np.ndarray:
    items = np.array([e[0] for e in events], dtype=object)
    ms = np.array([e[1] for e in events], dtype=np.int64)
    qty = np.array([e[2] for e in events])
    price = np.array([e[3] for e in events])
    return state.ingest(items, ms, qty, price)


def _close_all(state: PartitionState) -> list:
    """Close every closable bucket; returns those that had items due."""
    closed = []
    while state.closable() is not None:
        c = state.close_next()
        if c.rows.size:
            closed.append(c)
    return closed


def test_bucket_stays_open_until_watermark_passes_its_end():
    s = PartitionState(_cfg())
    _ingest(s, [("a", 10 * DAY + 5 * HOUR, 2, 1.0)])
    assert s.closable() is None
    # 00:30 next day: the watermark (23:30) is still inside day 10.
    _ingest(s, [("a", 11 * DAY + 30 * 60_000, 1, 1.0)])
    assert s.closable() is None
    _ingest(s, [("b", 11 * DAY + HOUR, 1, 1.0)])
    assert s.closable() == 10


def test_closing_zero_fills_items_without_sales():
    s = PartitionState(_cfg())
    _ingest(s, [("a", 10 * DAY, 3, 1.0), ("b", 10 * DAY, 5, 2.0), ("a", 11 * DAY, 1, 1.0)])
    _ingest(s, [("a", 13 * DAY + 2 * HOUR, 1, 1.0)])
    closed = _close_all(s)
    assert [c.bucket for c in closed] == [10, 11, 12]
    last = closed[-1]
    rows = {item: i for i, item in enumerate(last.item_ids)}
    # window is buckets 9..12, oldest first
    np.testing.assert_array_equal(last.window_buckets, [9, 10, 11, 12])
    np.testing.assert_array_equal(last.target[rows["a"]], [0, 3, 1, 0])
    np.testing.assert_array_equal(last.target[rows["b"]], [0, 5, 0, 0])
    np.testing.assert_array_equal(last.observed[rows["b"]], [0, 1, 1, 1])


def test_late_event_is_rejected_and_not_counted():
    s = PartitionState(_cfg())
    _ingest(s, [("a", 10 * DAY, 3, 1.0), ("a", 11 * DAY + 2 * HOUR, 1, 1.0)])
    late = _ingest(s, [("a", 10 * DAY + 20 * HOUR, 7, 1.0), ("a", 11 * DAY + 3 * HOUR, 1, 1.0)])
    np.testing.assert_array_equal(late, [True, False])
    closed = _close_all(s)
    assert closed[0].bucket == 10
    assert closed[0].target[0, -1] == 3


def test_event_within_lateness_counts_in_its_bucket():
    s = PartitionState(_cfg())
    _ingest(s, [("a", 10 * DAY + 23 * HOUR, 1, 1.0), ("a", 11 * DAY + 30 * 60_000, 1, 1.0)])
    late = _ingest(s, [("a", 10 * DAY + 23 * HOUR + 59 * 60_000, 4, 1.0)])
    assert not late.any()
    _ingest(s, [("a", 11 * DAY + 2 * HOUR, 1, 1.0)])
    closed = _close_all(s)
    assert closed[0].target[0, -1] == 5


def test_result_does_not_depend_on_how_events_are_batched():
    rng = np.random.default_rng(0)
    n = 400
    ms = np.sort(rng.integers(0, 20 * DAY, n)) + rng.integers(-2 * HOUR, 2 * HOUR, n)
    items = np.array([f"i{k}" for k in rng.integers(0, 30, n)], dtype=object)
    qty = rng.integers(0, 5, n).astype(float)
    price = rng.uniform(1, 3, n)

    def run(split: list[int]) -> tuple[np.ndarray, list]:
        s = PartitionState(_cfg())
        lates, out = [], []
        for a, b in zip([0, *split], [*split, n], strict=True):
            lates.append(s.ingest(items[a:b], ms[a:b], qty[a:b], price[a:b]))
            out.extend(
                (c.bucket, dict(zip(c.item_ids, c.target.tolist(), strict=True))) for c in _close_all(s)
            )
        return np.concatenate(lates), out

    late1, out1 = run([])
    late2, out2 = run([1, 7, 50, 51, 200, 333])
    np.testing.assert_array_equal(late1, late2)
    assert late1.any()
    assert out1 == out2


def test_price_is_quantity_weighted_and_carried_forward():
    s = PartitionState(_cfg())
    _ingest(
        s, [("a", 10 * DAY, 1, 2.0), ("a", 10 * DAY + HOUR, 3, 4.0), ("a", 12 * DAY + 2 * HOUR, 0, np.nan)]
    )
    closed = _close_all(s)
    np.testing.assert_allclose(closed[-1].price[0, -2:], [3.5, 3.5])


def test_capacity_grows_without_losing_rows():
    s = PartitionState(_cfg(initial_capacity=2))
    events = [(f"i{k}", 10 * DAY, float(k), 1.0) for k in range(50)]
    _ingest(s, [*events, ("z", 11 * DAY + 2 * HOUR, 1, 1.0)])
    closed = _close_all(s)
    got = dict(zip(closed[0].item_ids, closed[0].target[:, -1].tolist(), strict=True))
    assert all(got[f"i{k}"] == k for k in range(50))
    assert s.capacity >= 51


def test_forecasts_are_scored_when_their_target_closes():
    s = PartitionState(_cfg())
    _ingest(s, [("a", 10 * DAY, 2, 1.0), ("a", 11 * DAY + 2 * HOUR, 4, 1.0)])
    (c10,) = _close_all(s)
    assert c10.feedback[0, 0] == 0.0  # nothing realised yet
    # forecast for 11 and 12: P10/P50/P90
    s.record_forecasts(10, c10.rows, np.array([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]], dtype=np.float32))
    _ingest(s, [("a", 12 * DAY + 2 * HOUR, 1, 1.0)])
    (c11,) = _close_all(s)
    assert c11.score.n_scored == 1
    # actual 4 is above P90 = 3: a miss, pinball of each quantile q * (4 - pred)
    np.testing.assert_allclose(c11.score.pinball_sum, [0.1 * 3, 0.5 * 2, 0.9 * 1])
    assert c11.score.interval_hits == 0
    assert c11.feedback[0, 0] == pytest.approx(0.3)
    assert c11.feedback[0, 1] > 0  # under-forecast shows as positive bias


@pytest.mark.parametrize(("p10", "covered"), [(0.0004, 1), (0.0006, 0)])
def test_a_day_without_sales_is_scored_against_the_forecast_as_published(p10, covered):
    s = PartitionState(_cfg())
    _ingest(s, [("a", 10 * DAY, 2, 1.0), ("b", 11 * DAY + 2 * HOUR, 4, 1.0)])
    (c10,) = _close_all(s)
    # a sells nothing on day 11: a P10 published as 0.0 covers that, 0.001 does not.
    s.record_forecasts(10, c10.rows, np.array([[[p10, 1.0, 3.0], [p10, 1.0, 3.0]]], dtype=np.float32))
    _ingest(s, [("b", 12 * DAY + 2 * HOUR, 1, 1.0)])
    (c11,) = _close_all(s)
    assert c11.score.n_scored == 1
    assert c11.score.interval_hits == covered


def test_item_first_seen_later_is_not_forecast_before_it_exists():
    s = PartitionState(_cfg())
    _ingest(s, [("a", 10 * DAY, 1, 1.0), ("b", 11 * DAY + 2 * HOUR, 1, 1.0)])
    (c10,) = _close_all(s)
    assert list(c10.item_ids) == ["a"]


def test_idle_items_are_evicted_and_the_rest_keep_their_rows_data():
    s = PartitionState(_cfg(evict_after_buckets=3))
    _ingest(s, [("old", 10 * DAY, 1, 1.0), ("busy", 10 * DAY, 2, 1.0)])
    for d in range(11, 16):
        _ingest(s, [("busy", d * DAY + 2 * HOUR, float(d), 1.0)])
        for c in _close_all(s):
            s.record_forecasts(c.bucket, c.rows, np.ones((c.rows.size, 2, 3), np.float32))
    assert s.evict_idle(3) == 1
    assert list(s.index) == ["busy"] and s.n_items == 1
    _ingest(s, [("busy", 16 * DAY + 2 * HOUR, 1.0, 1.0)])
    (c,) = _close_all(s)
    np.testing.assert_array_equal(c.target[0], [12, 13, 14, 15])
    assert c.feedback[0, 0] > 0  # the ledger moved with the row
    # A forgotten item that sells again starts afresh.
    _ingest(s, [("old", 17 * DAY + 2 * HOUR, 4.0, 1.0), ("busy", 17 * DAY + 3 * HOUR, 1.0, 1.0)])
    _close_all(s)
    _ingest(s, [("busy", 18 * DAY + 2 * HOUR, 1.0, 1.0)])
    (c,) = _close_all(s)
    row = list(c.item_ids).index("old")
    np.testing.assert_array_equal(c.observed[row], [0, 0, 0, 1])
    assert c.feedback[row, 0] == 0
