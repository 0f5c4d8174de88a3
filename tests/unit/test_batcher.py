"""Micro-batch bounds, with an injected clock instead of sleeping."""

from __future__ import annotations

import numpy as np

from state.ledger import RealisedScore
from state.partition import ClosedBucket
from stream.batcher import BatcherConfig, ForecastRequest, MicroBatcher, chunks, cut_at_batches


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _closed(n: int, bucket: int = 1) -> ClosedBucket:
    z = np.zeros((n, 4), dtype=np.float32)
    return ClosedBucket(
        bucket=bucket,
        rows=np.arange(n),
        item_ids=np.array([f"i{i}" for i in range(n)], dtype=object),
        target=z,
        observed=z,
        price=z,
        feedback=np.zeros((n, 6), dtype=np.float32),
        window_buckets=np.arange(4),
        score=RealisedScore(np.zeros(3), 0.0, 0, 0),
    )


def test_batch_is_due_when_the_oldest_request_waited_max_delay():
    clock = FakeClock()
    b = MicroBatcher(BatcherConfig(max_batch=100, max_delay_ms=46.875), clock)
    assert not b.due() and b.seconds_until_due() is None
    b.add(0, _closed(10))
    clock.now += 0.03125
    b.add(1, _closed(10))
    assert not b.due()
    assert abs(b.seconds_until_due() - 0.015625) < 1e-9
    clock.now += 0.015625
    assert b.due()


def test_batch_is_due_at_once_when_full():
    b = MicroBatcher(BatcherConfig(max_batch=16, max_delay_ms=1000), FakeClock())
    b.add(0, _closed(10))
    assert not b.due()
    b.add(1, _closed(6))
    assert b.due() and b.seconds_until_due() == 0.0


def test_take_empties_and_tracks_partitions():
    b = MicroBatcher(BatcherConfig(), FakeClock())
    b.add(3, _closed(5))
    assert b.has_pending(3) and not b.has_pending(4)
    taken = b.take()
    assert [r.partition for r in taken] == [3] and b.pending_rows == 0 and not b.has_pending(3)


def test_chunks_cover_rows_within_the_size_bound():
    assert chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunks(0, 4) == []


def test_take_with_a_row_limit_splits_the_last_request_and_keeps_the_rest_first():
    clock = FakeClock()
    b = MicroBatcher(BatcherConfig(max_batch=100, max_delay_ms=10), clock)
    b.add(0, _closed(30, bucket=5))
    clock.now += 1.0
    b.add(1, _closed(50, bucket=7))
    first = b.take(max_rows=40)
    assert [(r.partition, r.rows) for r in first] == [(0, 30), (1, 10)]
    assert b.pending_rows == 40 and b.has_pending(1) and not b.has_pending(0)
    rest = b.take(max_rows=1000)
    assert [(r.partition, r.rows) for r in rest] == [(1, 40)]
    # The two halves cover the request exactly, in order, and keep its times.
    assert list(first[1].closed.item_ids) + list(rest[0].closed.item_ids) == [f"i{i}" for i in range(50)]
    assert rest[0].closed.bucket == 7 and rest[0].enqueued_at == first[1].enqueued_at == 101.0
    assert b.pending_rows == 0 and b.take(max_rows=5) == []


def test_cut_at_batches_ends_a_piece_at_every_batch_boundary():
    requests = [
        ForecastRequest(0, _closed(3), 0.0, 0.0),
        ForecastRequest(1, _closed(10), 0.0, 0.5),
        ForecastRequest(2, _closed(4), 0.0, 0.7, publish=False),
    ]
    pieces = cut_at_batches(requests, 4)
    assert [(i, p.rows) for i, p in pieces] == [(0, 3), (1, 1), (1, 4), (1, 4), (1, 1), (2, 3), (2, 1)]
    bounds = np.cumsum([p.rows for _, p in pieces])
    assert set(range(4, 17, 4)) <= set(bounds.tolist())
    # The pieces of a request keep its identity, times and rows in order.
    ids = np.concatenate([p.closed.item_ids for i, p in pieces if i == 1])
    assert ids.tolist() == requests[1].closed.item_ids.tolist()
    for i, p in pieces:
        assert (p.partition, p.closed_at) == (requests[i].partition, requests[i].closed_at)
    assert [p.publish for i, p in pieces if i == 2] == [False, False]
    assert [p.rows for _, p in cut_at_batches(requests, 100)] == [3, 10, 4]
