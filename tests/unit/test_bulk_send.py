"""The bulk appender writes what kafka-python's own append writes, batch for batch, byte for byte."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from kafka.producer.record_accumulator import RecordAccumulator
from kafka.record.memory_records import MemoryRecords
from kafka.structs import TopicPartition
from native import c_or_python

import stream.bulk_send
from stream.bulk_send import append_records, varint

TP = TopicPartition("forecasts", 0)
TS = 1_764_000_000_000


@pytest.fixture(autouse=True, params=["C", "Python"])
def framing(request, monkeypatch):
    """Every test runs with the records framed in C (``stream/_records.c``) and in Python."""
    return c_or_python(request, monkeypatch, stream.bulk_send)


def records(n: int, seed: int = 0, sizes: tuple[int, int] = (1, 400)) -> tuple[list[bytes], list[bytes]]:
    rng = np.random.default_rng(seed)
    keys = [f"item-{i}".encode() * int(rng.integers(1, 30)) for i in range(n)]
    values = [bytes(rng.integers(0, 256, int(rng.integers(*sizes)), dtype=np.uint8)) for _ in range(n)]
    return keys, values


def closed_buffers(acc: RecordAccumulator) -> list[bytes]:
    out = []
    for batch in acc._batches[TP]:
        batch.records.close()
        out.append(bytes(batch.records.buffer()))
    return out


def test_varint_matches_kafkas_zigzag_encoding():
    assert varint(0) == b"\x00"
    assert varint(1) == b"\x02"
    assert varint(63) == b"\x7e"
    assert varint(64) == b"\x80\x01"
    assert varint(-1) == b"\x01"
    assert varint(1 << 20) == b"\x80\x80\x80\x01"


@pytest.mark.parametrize("calls", [1, 3])
def test_bulk_append_writes_the_same_batches_as_one_append_per_record(calls):
    keys, values = records(300)
    plain = RecordAccumulator(batch_size=4096)
    for k, v in zip(keys, values, strict=True):
        plain.append(TP, TS, k, v, [])
    bulk = RecordAccumulator(batch_size=4096)
    for part in np.array_split(np.arange(len(keys)), calls):
        append_records(bulk, TP, TS, [keys[i] for i in part], [values[i] for i in part])
    expected = closed_buffers(plain)
    assert len(expected) > 10  # several batches, so the batch boundaries are exercised
    assert closed_buffers(bulk) == expected


def test_values_too_long_for_the_varint_table_are_written_the_same():
    keys, values = records(40, seed=4, sizes=(16_000, 20_000))  # lengths past 16383 take 3 varint bytes
    plain = RecordAccumulator(batch_size=128 * 1024)
    for k, v in zip(keys, values, strict=True):
        plain.append(TP, TS, k, v, [])
    bulk = RecordAccumulator(batch_size=128 * 1024)
    append_records(bulk, TP, TS, keys, values)
    expected = closed_buffers(plain)
    assert len(expected) > 2 and all(b.record_count > 1 for b in plain._batches[TP])
    assert closed_buffers(bulk) == expected


def test_records_read_back_with_their_keys_values_and_offsets():
    keys, values = records(120, seed=1)
    acc = RecordAccumulator(batch_size=8192)
    append_records(acc, TP, TS, keys, values)
    got = []
    for buf in closed_buffers(acc):
        for batch in MemoryRecords(buf):
            batch.validate_crc()
            got.extend((r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in batch)
    assert [g[2] for g in got] == keys
    assert [g[3] for g in got] == values
    assert all(g[1] == TS and g[4] == [] for g in got)
    # Offsets restart at 0 in each batch (the broker assigns the real ones).
    assert got[0][0] == 0 and all(b[0] in (0, a[0] + 1) for a, b in itertools.pairwise(got))


def test_a_record_larger_than_the_batch_size_goes_alone_in_its_own_batch():
    keys = [b"a", b"big", b"c"]
    values = [b"x" * 10, b"y" * 5000, b"z" * 10]
    acc = RecordAccumulator(batch_size=1024)
    touched = append_records(acc, TP, TS, keys, values)
    counts = [b.record_count for b in acc._batches[TP]]
    assert counts == [1, 1, 1]
    assert len(touched) == 3


def test_a_batch_the_sender_has_closed_is_not_written_to():
    keys, values = records(5, seed=2, sizes=(10, 20))
    acc = RecordAccumulator(batch_size=16384)
    first = append_records(acc, TP, TS, keys[:2], values[:2])
    acc._batches[TP][-1].records.close()  # what draining a batch does
    second = append_records(acc, TP, TS + 5, keys[2:], values[2:])
    assert [b.record_count for b in acc._batches[TP]] == [2, 3]
    assert first[0] is not second[0]


def test_each_call_returns_every_batch_it_wrote_to_in_order():
    keys, values = records(200, seed=3, sizes=(200, 300))
    acc = RecordAccumulator(batch_size=4096)
    touched = append_records(acc, TP, TS, keys, values)
    assert touched == [b.produce_future for b in acc._batches[TP]]
    assert sum(b.record_count for b in acc._batches[TP]) == 200


def test_mismatched_columns_are_refused():
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        append_records(RecordAccumulator(), TP, TS, [b"a", b"b"], [b"x"])


def test_text_keys_are_written_as_their_utf8():
    keys, values = records(300, seed=5)
    texts = [k.decode() for k in keys]
    texts[7] = "ünï-çödé-𝄞"  # several bytes a character
    keys[7] = texts[7].encode("utf-8")
    as_bytes = RecordAccumulator(batch_size=4096)
    append_records(as_bytes, TP, TS, keys, values)
    as_text = RecordAccumulator(batch_size=4096)
    append_records(as_text, TP, TS, texts, values)
    assert closed_buffers(as_text) == closed_buffers(as_bytes)


def test_keys_neither_bytes_nor_text_are_refused():
    acc = RecordAccumulator(batch_size=4096)
    append_records(acc, TP, TS, [b"a"], [b"x"])  # an open batch, so the next record is framed
    with pytest.raises(TypeError):
        append_records(acc, TP, TS, [b"b", 3], [b"y", b"z"])
