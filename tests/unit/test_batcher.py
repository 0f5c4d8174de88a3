"""Micro-batch bounds, with an injected clock instead of sleeping."""

from __future__ import annotations

import numpy as np

from state.ledger import RealisedScore
from state.partition import ClosedBucket
from stream.batcher import BatcherConfig, MicroBatcher, chunks


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
