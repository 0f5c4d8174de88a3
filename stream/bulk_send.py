"""Append a whole column of records to a kafka-python producer at once.

``KafkaProducer.send`` costs 16-36 us per record on the development machine (checks, serialisers,
the partitioner, a size estimate, a lock, a record future and a record encoded byte by byte in
Python), which made the producer the largest part of a bucket's latency: 10k forecasts spent about
200 ms in ``send`` alone, even with their partitions given. Forecasts arrive as a batch whose
partitions are already known, so this module writes them straight into the producer's open record
batches: one lock per partition and batch, the records framed in C (``stream/_records.c``; in
Python from precomputed varints where it was not built), and one future per record batch rather
than per record (``python -m bench publish`` measures both).

It reaches into the producer's accumulator, so it is tied to the kafka-python release pinned in
pyproject.toml; ``tests/unit/test_bulk_send.py`` checks that it writes the very bytes the accumulator's own
``append`` writes, so an upgrade that changes the layout fails there first. The record batch format
is Kafka's v2 (magic 2), the only one brokers of the supported versions take.

What stays with the client: creating each new batch (through ``RecordAccumulator.append`` with its
first record), producer ids and sequence numbers (assigned when the sender drains a batch),
transactions (each partition is added with ``maybe_add_partition_to_transaction`` as ``send``
does), compression (applied when a batch is closed), retries and acknowledgements.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
from kafka import KafkaProducer
from kafka.producer.future import FutureProduceResult
from kafka.producer.producer_batch import ProducerBatch
from kafka.producer.record_accumulator import RecordAccumulator
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.util import encode_varint
from kafka.structs import TopicPartition

from stream.errors import PublishError
from stream.partitioner import key_partitions

try:
    from stream import _records as _native
except ImportError:  # built without a C compiler (setup.py): the same records, framed in Python
    _native = None

#: Whether this install frames records in C (``stream/_records.c``).
NATIVE_RECORDS = _native is not None


def _varint(value: int) -> bytes:
    out = bytearray()
    encode_varint(value, out.append)
    return bytes(out)


# Zigzag varints of 0..16383 cover every offset inside a batch and every key and forecast length
# met in practice; larger values are encoded on the spot.
_VARINTS = [_varint(i) for i in range(1 << 14)]


def varint(value: int) -> bytes:
    """Kafka's zigzag varint encoding of ``value``."""
    return _VARINTS[value] if 0 <= value < len(_VARINTS) else _varint(value)


@dataclass
class Appended:
    """Where one partition's records went: the record batches written to, in order."""

    partition: int
    batches: list[FutureProduceResult]

    @property
    def last(self) -> FutureProduceResult:
        """Completes when the broker has acknowledged every record of this call for the partition
        (a partition's batches are acknowledged in order)."""
        return self.batches[-1]


def _frame(
    head: bytes, offset: int, keys: Sequence[bytes | str], values: Sequence[bytes], start: int, room: int
) -> tuple[bytes, int, int]:
    """Records ``start..stop`` framed one after another while they fit in ``room`` bytes, their
    offset deltas from ``offset`` on: (their bytes, ``stop``, the largest record's size). The
    Python twin of ``stream._records.frame_into``, which writes them straight into the buffer."""
    size = 0
    largest = 0
    i = start
    n = len(keys)
    parts: list[bytes] = []
    table, join = _VARINTS, b"".join
    while i < n:
        key, value = _key_bytes(keys[i]), values[i]
        try:  # the table covers nearly every record; a function call per varint costs 15% here
            body = join((head, table[offset], table[len(key)], key, table[len(value)], value, b"\x00"))
            length = table[len(body)]
        except IndexError:
            body = join((head, varint(offset), varint(len(key)), key, varint(len(value)), value, b"\x00"))
            length = varint(len(body))
        need = len(length) + len(body)
        if size + need > room:
            break
        parts.append(length)
        parts.append(body)
        size += need
        largest = max(largest, need)
        offset += 1
        i += 1
    return b"".join(parts), i, largest


def _key_bytes(key: bytes | str) -> bytes:
    """A record's key as bytes: a str is written as its UTF-8 (as ``stream._records.frame_into`` does)."""
    return key.encode("utf-8") if isinstance(key, str) else key


def _fill(
    batch: ProducerBatch,
    timestamp_ms: int,
    keys: Sequence[bytes | str],
    values: Sequence[bytes],
    start: int,
    now: float,
) -> int:
    """Write records ``start..`` into ``batch`` while they fit; returns the index of the first that did not.

    Writes exactly what ``DefaultRecordBatchBuilder.append`` would for a record without headers,
    with the timestamp delta and offset delta of its position. The caller holds the partition lock.
    The records are framed in C where the extension was built (``stream/_records.c``, straight
    into the batch's buffer), else in Python (:func:`_frame`), the same bytes either way.
    """
    records = batch.records
    builder = records._builder
    if records._closed or not isinstance(builder, DefaultRecordBatchBuilder):
        return start
    if builder._first_timestamp is None:
        return start
    buffer = builder._buffer
    offset = records._next_offset
    head = b"\x00" + varint(timestamp_ms - builder._first_timestamp)  # attributes, timestamp delta
    room = builder._batch_size - len(buffer)
    if _native is not None:  # straight into the batch's buffer, without a bytes object between
        i, largest = _native.frame_into(buffer, head, offset, keys, values, start, room)
    else:
        framed, i, largest = _frame(head, offset, keys, values, start, room)
        buffer += framed
    if i == start:
        return start
    offset += i - start
    builder._num_records += i - start
    builder._last_offset = offset - 1
    builder._max_timestamp = max(builder._max_timestamp, timestamp_ms)
    records._next_offset = offset
    batch.max_record_size = max(batch.max_record_size, largest)
    batch.last_append = now
    return i


def append_records(
    accumulator: RecordAccumulator,
    tp: TopicPartition,
    timestamp_ms: int,
    keys: Sequence[bytes | str],
    values: Sequence[bytes],
) -> list[FutureProduceResult]:
    """Append records to one partition's batches, in order; returns each batch written to.

    The open batch is filled first; when a record does not fit, the accumulator's own ``append``
    starts the next batch with it (so a record larger than the batch size still goes out alone,
    as with ``send``), and the rest fill that one.
    """
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys but {len(values)} values")
    touched: list[FutureProduceResult] = []
    i, n = 0, len(keys)
    while i < n:
        now = time.monotonic()
        # abortIncompleteBatches waits for appends in progress; count this one like append does.
        accumulator._appends_in_progress.increment()
        try:
            with accumulator._tp_lock(tp):
                dq = accumulator._batches[tp]
                if dq:
                    batch = dq[-1]
                    j = _fill(batch, timestamp_ms, keys, values, i, now)
                    if j > i:
                        if not touched or touched[-1] is not batch.produce_future:
                            touched.append(batch.produce_future)
                        i = j
                        continue
        finally:
            accumulator._appends_in_progress.decrement()
        # No open batch, or it is full: the accumulator starts one with this record. Its batch is
        # taken from the record's future, not the deque, which the sender may have drained since.
        future = accumulator.append(tp, timestamp_ms, _key_bytes(keys[i]), values[i], [], now=now)[0]
        i += 1
        if not touched or touched[-1] is not future._produce_future:
            touched.append(future._produce_future)
    return touched


def send_many(
    producer: KafkaProducer,
    topic: str,
    partitions: np.ndarray,
    keys: Sequence[bytes | str],
    values: Sequence[bytes],
    timestamp_ms: int | None = None,
) -> list[Appended]:
    """Send ``values[i]`` keyed ``keys[i]`` to ``partitions[i]`` of ``topic``, like a loop of
    ``producer.send`` (each partition's records keep their order), at a fraction of its cost.

    Values must be bytes and keys bytes or str, written as UTF-8 (no serialisers run). Returns, per
    partition written to, the batches that carry its records; :meth:`stream.publish.Publisher.flush`
    checks they all succeed.
    """
    if producer._closed:
        raise PublishError("the producer is closed")
    if not (len(keys) == len(values) == len(partitions)):
        raise ValueError(f"{len(keys)} keys, {len(values)} values, {len(partitions)} partitions")
    if len(keys) == 0:
        return []
    # send checks each record's size against max_request_size: the longest key with the longest
    # value bound every record, without a size per record.
    key_size, value_size = _longest(keys, values)
    producer._ensure_valid_record_size(
        DefaultRecordBatchBuilder.estimate_size_in_bytes(bytes(key_size), bytes(value_size), [])
    )
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000)
    part = np.asarray(partitions, dtype=np.int64)
    order = np.argsort(part, kind="stable")  # each partition's records in their given order
    cuts = np.flatnonzero(np.diff(part[order])) + 1
    transactions = producer._transaction_manager
    out: list[Appended] = []
    for rows in np.split(order, cuts):
        p = int(part[rows[0]])
        tp = TopicPartition(topic, p)
        if transactions is not None and transactions.is_transactional():
            transactions.maybe_add_partition_to_transaction(tp)
        pick = itemgetter(*rows.tolist())  # one C-level gather per column (a tuple of 2+ rows)
        batches = append_records(
            producer._accumulator,
            tp,
            timestamp_ms,
            (keys[int(rows[0])],) if rows.size == 1 else pick(keys),
            (values[int(rows[0])],) if rows.size == 1 else pick(values),
        )
        out.append(Appended(p, batches))
    producer._sender.wakeup()
    return out


def _longest(keys: Sequence[bytes | str], values: Sequence[bytes]) -> tuple[int, int]:
    """The largest key and value in bytes (in C where built; in Python a str key counts 4 bytes a
    character, the most its UTF-8 takes)."""
    if _native is not None:
        return _native.longest(keys, values)
    key = max(keys, key=len)
    return len(key) * 4 if isinstance(key, str) else len(key), len(max(values, key=len))


def send_keyed(
    producer: KafkaProducer, topic: str, keys: Sequence[bytes | str], values: Sequence[bytes]
) -> list[Appended]:
    """:func:`send_many` to the partitions Kafka's default partitioner would choose for ``keys``,
    hashed for the whole column at once (:func:`stream.partitioner.key_partitions`)."""
    return send_many(producer, topic, key_partitions(keys, producer.partitions_for(topic)), keys, values)


def unacknowledged(futures: list) -> list:
    """The sends of ``futures`` still in flight; raises :class:`PublishError` if one failed."""
    for fut in futures:
        if fut.failed():
            raise PublishError(f"a message was not acknowledged: {fut.exception!r}") from fut.exception
    return [f for f in futures if not f.is_done]
