"""Checkpoint writes beside the service's loop.

A checkpoint's snapshots are encoded on the loop (that is what makes each a consistent picture of
its partition at one input offset), but sending them to the changelog and waiting for the broker's
acknowledgements is I/O that grows with the items: about 3 KB an item, 5 s for 300k items and 30
s for 1M on the development machine (`python -m bench recovery`), most of it the write. The
writer does that part on a thread of its own, with a producer of its own, so the loop goes on
consuming and forecasting meanwhile, and its forecasts never queue behind snapshot chunks in one
producer's buffer.

Nothing the loop does depends on a snapshot being acknowledged: a restore seeks the input to the
offset its snapshot includes, whatever the committed offset says, so a crash before the write
ends restores the checkpoint before it and replays a little more. One write is in flight at a
time, so the changelog's two key slots per partition alternate as with writes on the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from stream.bulk_send import unacknowledged
from stream.changelog import Changelog, ChangelogError


@dataclass(frozen=True)
class Snapshot:
    """One partition's encoded state and the input offset it includes."""

    partition: int
    data: bytes
    input_offset: int


@dataclass(frozen=True)
class WriteDone:
    """A checkpoint whose snapshots were all acknowledged."""

    partitions: tuple[int, ...]
    #: The clock's reading when the checkpoint began (its snapshots' encoding).
    started: float
    #: From that beginning to the broker's last acknowledgement.
    seconds: float


class SnapshotWriter:
    """Writes one checkpoint's snapshots at a time on its own thread; the loop collects the outcome
    (:meth:`finished`, :meth:`wait`), including a failure, which it raises there."""

    def __init__(
        self, changelog: Changelog, clock: Callable[[], float] = time.monotonic, timeout_s: float = 120.0
    ) -> None:
        self.changelog = changelog
        self.clock = clock
        self.timeout_s = timeout_s
        self._thread: threading.Thread | None = None
        self._done: WriteDone | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        """Whether a write started and its outcome has not been collected yet."""
        return self._thread is not None

    def start(self, snapshots: list[Snapshot], started: float) -> None:
        """Begin writing ``snapshots`` (encoded from ``started`` on); returns at once."""
        if self._thread is not None:
            raise RuntimeError("a checkpoint is already being written: collect it first (finished / wait)")
        self._done, self._error = None, None
        self._thread = threading.Thread(
            target=self._write, args=(snapshots, started), name="mqcast-checkpoint", daemon=True
        )
        self._thread.start()

    def finished(self) -> WriteDone | None:
        """The write that has ended since the last call (None if none has, or it is still going);
        raises :class:`ChangelogError` if it failed."""
        if self._thread is None or self._thread.is_alive():
            return None
        return self._collect()

    def wait(self, timeout_s: float | None = None) -> WriteDone | None:
        """Block until the write in flight, if any, has ended, and collect it as :meth:`finished`."""
        if self._thread is None:
            return None
        limit = self.timeout_s if timeout_s is None else timeout_s
        self._thread.join(limit)
        if self._thread.is_alive():
            raise ChangelogError(f"a checkpoint's snapshots were not acknowledged within {limit:g}s")
        return self._collect()

    def close(self) -> None:
        """Let the write in flight end (its outcome is dropped; :meth:`wait` first to see it), then
        close the producer."""
        try:
            if self._thread is not None:
                self._thread.join(self.timeout_s)
        finally:
            self.changelog.producer.close(timeout=10)

    def _collect(self) -> WriteDone | None:
        assert self._thread is not None
        self._thread.join()
        self._thread = None
        done, error = self._done, self._error
        self._done, self._error = None, None
        if error is not None:
            raise ChangelogError(f"writing a checkpoint to {self.changelog.topic} failed: {error}") from error
        return done

    def _write(self, snapshots: list[Snapshot], started: float) -> None:
        try:
            futures = []
            for snap in snapshots:
                futures.extend(self.changelog.write(snap.partition, snap.data, snap.input_offset)[1])
            self.changelog.producer.flush(timeout=self.timeout_s)
            left = unacknowledged(futures)
            if left:
                raise ChangelogError(f"{len(left)} snapshot chunks still unacknowledged")
            partitions = tuple(s.partition for s in snapshots)
            self._done = WriteDone(partitions, started, self.clock() - started)
        except BaseException as exc:  # handed to the loop, which raises it
            self._error = exc
