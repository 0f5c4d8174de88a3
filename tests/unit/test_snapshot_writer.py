"""The checkpoint writer: snapshots go out beside the loop, one write at a time, and whatever
becomes of a write (done, failed, stuck) reaches the loop when it collects it."""

from __future__ import annotations

import threading

import pytest
from kafka.future import Future

from stream.changelog import ChangelogError
from stream.snapshot_writer import Snapshot, SnapshotWriter


class _Producer:
    def __init__(self) -> None:
        self.flushed = 0
        self.closed = False

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class _Changelog:
    """Stands in for the changelog topic: each write waits for ``release`` and resolves its future
    as ``fail`` says (a broker's refusal or its acknowledgement)."""

    topic = "group.sales.state"

    def __init__(self, fail: bool = False) -> None:
        self.producer = _Producer()
        self.release = threading.Event()
        self.written: list[tuple[int, bytes, int]] = []
        self.fail = fail

    def write(self, partition: int, data: bytes, input_offset: int) -> tuple[None, list[Future]]:
        self.release.wait(5)
        self.written.append((partition, data, input_offset))
        fut = Future()
        if self.fail:
            fut.failure(RuntimeError("NotEnoughReplicas"))
        else:
            fut.success(None)
        return None, [fut]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_checkpoint_is_written_beside_the_caller_which_collects_it_once_acknowledged():
    log, clock = _Changelog(), _Clock()
    writer = SnapshotWriter(log, clock)  # type: ignore[arg-type]
    writer.start([Snapshot(0, b"p0", 10), Snapshot(3, b"p3", 7)], started=clock())
    # The write waits for the broker; the caller has its hands free meanwhile.
    assert writer.busy
    assert writer.finished() is None
    clock.now = 104.5
    log.release.set()
    done = writer.wait()
    assert done is not None
    assert done.partitions == (0, 3)
    assert done.seconds == pytest.approx(4.5)
    assert log.written == [(0, b"p0", 10), (3, b"p3", 7)]
    assert log.producer.flushed == 1
    assert not writer.busy
    assert writer.finished() is None  # collected once


def test_a_refused_snapshot_is_raised_where_the_loop_collects_the_write():
    log = _Changelog(fail=True)
    log.release.set()
    writer = SnapshotWriter(log)  # type: ignore[arg-type]
    writer.start([Snapshot(1, b"x", 5)], started=0.0)
    with pytest.raises(ChangelogError, match="NotEnoughReplicas"):
        writer.wait()
    assert not writer.busy  # the next checkpoint may start


def test_one_write_at_a_time_so_the_slots_alternate():
    log = _Changelog()
    writer = SnapshotWriter(log)  # type: ignore[arg-type]
    writer.start([Snapshot(0, b"a", 1)], started=0.0)
    with pytest.raises(RuntimeError, match="already being written"):
        writer.start([Snapshot(0, b"b", 2)], started=0.0)
    log.release.set()
    writer.wait()
    writer.start([Snapshot(0, b"b", 2)], started=0.0)
    writer.wait()
    assert [w[1] for w in log.written] == [b"a", b"b"]


def test_a_write_that_does_not_end_is_an_error_not_an_endless_wait():
    log = _Changelog()
    writer = SnapshotWriter(log, timeout_s=0.05)  # type: ignore[arg-type]
    writer.start([Snapshot(0, b"a", 1)], started=0.0)
    with pytest.raises(ChangelogError, match="not acknowledged within"):
        writer.wait()
    log.release.set()
    writer.close()
    assert log.producer.closed
