"""Durable partition state: snapshots on a compacted changelog topic, co-partitioned with the input.

Partition ``p`` of the changelog holds the snapshots of input partition ``p``, so whichever instance
the group assigns ``p`` can restore it. A snapshot is written as chunks under one of two key slots
and then a manifest naming the slot; a crash halfway through a snapshot leaves the previous slot and
manifest whole. Each manifest records the input offset its snapshot includes: the restoring instance
seeks the input there, so the events after it are applied exactly once to the state, whatever the
committed offset says (an offset commit and a state write are not atomic).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from stream.errors import MqcastError

#: Stay well under the broker's default 1 MiB message limit.
CHUNK_BYTES = 900_000
MANIFEST_KEY = b"manifest"


class ChangelogError(MqcastError):
    """The changelog could not be written or read back."""


@dataclass(frozen=True)
class Manifest:
    """Which slot holds the latest complete snapshot of a partition, and what it covers."""

    slot: int
    snapshot_id: str
    chunks: int
    size: int
    input_offset: int
    written_at_ms: int


def changelog_topic(group_id: str, sales_topic: str) -> str:
    """Name of the changelog of one group's state over one input topic."""
    return f"{group_id}.{sales_topic}.state"


def _chunk_key(slot: int, index: int) -> bytes:
    return f"{slot}:{index:06d}".encode()


class Changelog:
    """Writes and reads partition snapshots on the changelog topic."""

    def __init__(
        self, producer: KafkaProducer, bootstrap: str, topic: str, read_committed: bool = False
    ) -> None:
        self.producer = producer
        self.bootstrap = bootstrap
        self.topic = topic
        # With transactions, a snapshot counts only once its transaction committed.
        self.isolation = "read_committed" if read_committed else "read_uncommitted"
        self._slots: dict[int, int] = {}

    def write(self, partition: int, data: bytes, input_offset: int) -> tuple[Manifest, list]:
        """Send one snapshot (chunks, then the manifest); returns it and the send futures.

        The caller flushes the producer and checks the futures before committing anything that
        relies on the snapshot.
        """
        slot = 1 - self._slots.get(partition, 1)
        self._slots[partition] = slot
        snap_id = uuid.uuid4().hex
        n_chunks = max(1, -(-len(data) // CHUNK_BYTES))
        futures = []
        for i in range(n_chunks):
            chunk = data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]
            futures.append(
                self.producer.send(
                    self.topic,
                    key=_chunk_key(slot, i),
                    value=chunk,
                    partition=partition,
                    headers=[("snapshot", snap_id.encode())],
                )
            )
        manifest = Manifest(slot, snap_id, n_chunks, len(data), int(input_offset), int(time.time() * 1000))
        futures.append(
            self.producer.send(
                self.topic, key=MANIFEST_KEY, value=orjson.dumps(manifest.__dict__), partition=partition
            )
        )
        return manifest, futures

    def read_latest(self, partition: int, timeout_s: float = 60.0) -> tuple[list[bytes], Manifest] | None:
        """The newest complete snapshot of ``partition`` as its chunks, in order (which
        ``state.snapshot.restore`` reads as they are), or None if it has none."""
        tp = TopicPartition(self.topic, partition)
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            client_id="mqcast-restore",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            isolation_level=self.isolation,
        )
        try:
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            latest: dict[bytes, tuple[bytes, bytes]] = {}  # key -> (value, snapshot header)
            deadline = time.monotonic() + timeout_s
            while consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise ChangelogError(f"reading {self.topic}[{partition}] took over {timeout_s}s")
                for recs in consumer.poll(timeout_ms=500).values():
                    for r in recs:
                        if r.value is None:
                            latest.pop(r.key, None)
                        else:
                            latest[r.key] = (r.value, dict(r.headers or []).get("snapshot", b""))
        finally:
            consumer.close()
        if MANIFEST_KEY not in latest:
            return None
        m = Manifest(**orjson.loads(latest[MANIFEST_KEY][0]))
        parts = []
        for i in range(m.chunks):
            value, snap = latest.get(_chunk_key(m.slot, i), (b"", b""))
            if snap.decode() != m.snapshot_id:
                raise ChangelogError(
                    f"{self.topic}[{partition}]: chunk {i} of snapshot {m.snapshot_id} is missing or replaced"
                )
            parts.append(value)
        size = sum(len(p) for p in parts)
        if size != m.size:
            raise ChangelogError(
                f"{self.topic}[{partition}]: snapshot is {size} bytes, manifest says {m.size}"
            )
        self._slots[partition] = m.slot
        return parts, m
