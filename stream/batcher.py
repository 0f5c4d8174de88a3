"""Micro-batching of forecast requests, bounded by size and by delay.

Closing a bucket makes every item of the partition due for a forecast. Requests from several
partitions are held together until either ``max_batch`` rows wait or the oldest has waited
``max_delay_ms``; the model then runs over all of them at once. Time comes from an injected clock so
the bounds are tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from state.partition import ClosedBucket


@dataclass(frozen=True)
class BatcherConfig:
    """Bounds of one micro-batch."""

    # On CPU the network is fastest around a thousand rows (caches); GPUs want far more.
    max_batch: int = 1024
    max_delay_ms: float = 50.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {self.max_delay_ms}")


@dataclass
class ForecastRequest:
    """One partition's closed bucket waiting for its forecasts."""

    partition: int
    closed: ClosedBucket
    enqueued_at: float  # clock seconds
    closed_at: float  # clock seconds when the bucket closed, for end-to-end latency
    publish: bool = True  # False while a restored partition replays output that already went out

    @property
    def rows(self) -> int:
        return int(self.closed.rows.shape[0])


class MicroBatcher:
    """Holds forecast requests until the batch is full or the oldest one is due."""

    def __init__(self, cfg: BatcherConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self._pending: list[ForecastRequest] = []
        self._rows = 0

    @property
    def pending_rows(self) -> int:
        return self._rows

    def __len__(self) -> int:
        return len(self._pending)

    def add(
        self, partition: int, closed: ClosedBucket, closed_at: float | None = None, publish: bool = True
    ) -> None:
        """Queue the forecasts of one closed bucket."""
        now = self.clock()
        self._pending.append(
            ForecastRequest(partition, closed, now, now if closed_at is None else closed_at, publish)
        )
        self._rows += int(closed.rows.shape[0])

    def pending(self) -> list[ForecastRequest]:
        """The queued requests, oldest first (a copy)."""
        return list(self._pending)

    def has_pending(self, partition: int) -> bool:
        """Whether a request of ``partition`` waits (its next bucket must not close before it runs)."""
        return any(r.partition == partition for r in self._pending)

    def seconds_until_due(self) -> float | None:
        """Time until the oldest request reaches the delay bound (0 if due now, None if empty)."""
        if not self._pending:
            return None
        if self._rows >= self.cfg.max_batch:
            return 0.0
        waited = self.clock() - self._pending[0].enqueued_at
        return max(0.0, self.cfg.max_delay_ms / 1000.0 - waited)

    def due(self) -> bool:
        """True when the batch is full or the oldest request has waited long enough."""
        wait = self.seconds_until_due()
        return wait is not None and wait <= 0.0

    def take(self, max_rows: int | None = None) -> list[ForecastRequest]:
        """Remove and return the pending requests, oldest first: all of them, or about ``max_rows``
        rows (the last request is split so no more than ``max_rows`` leave)."""
        if max_rows is None or self._rows <= max_rows:
            taken, self._pending, self._rows = self._pending, [], 0
            return taken
        taken: list[ForecastRequest] = []
        rows = 0
        while self._pending and rows < max_rows:
            req = self._pending[0]
            room = max_rows - rows
            if req.rows <= room:
                taken.append(self._pending.pop(0))
                rows += req.rows
            else:
                # The tail stays first in line with its original times, so its delay bound and its
                # end-to-end latency still count from when the bucket closed.
                head_closed, tail_closed = req.closed.split(room)
                taken.append(replace(req, closed=head_closed))
                self._pending[0] = replace(req, closed=tail_closed)
                rows += room
        self._rows -= rows
        return taken


def cut_at_batches(requests: list[ForecastRequest], size: int) -> list[tuple[int, ForecastRequest]]:
    """The requests cut wherever their concatenated rows cross a multiple of ``size``, each piece
    with the index of the request it came from: so every model batch of ``size`` rows finishes
    whole pieces, which can be published while the next batch runs."""
    pieces: list[tuple[int, ForecastRequest]] = []
    offset = 0
    for i, req in enumerate(requests):
        rest = req
        while rest.rows > size - offset % size:
            head, tail = rest.closed.split(size - offset % size)
            pieces.append((i, replace(rest, closed=head)))
            offset += head.rows.shape[0]
            rest = replace(rest, closed=tail)
        pieces.append((i, rest))
        offset += rest.rows
    return pieces


def chunks(total: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of at most ``size`` rows covering ``total`` rows."""
    return [(start, min(start + size, total)) for start in range(0, total, size)]
