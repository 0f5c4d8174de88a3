"""The batch partitioner puts every key where Kafka's default partitioner would."""

from __future__ import annotations

import random

import numpy as np
import pytest
from kafka.partitioner.default import murmur2 as client_murmur2
from native import c_or_python

import stream.partitioner
from stream.partitioner import key_partitions, murmur2


@pytest.fixture(autouse=True, params=["C", "Python"])
def hashing(request, monkeypatch):
    """Every test runs with the keys hashed in C (``stream/_records.c``) and over numpy columns."""
    return c_or_python(request, monkeypatch, stream.partitioner)


# Kafka's own murmur2 test vectors (the Java client's UtilsTest), as signed 32-bit values.
JAVA_VECTORS = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


def test_murmur2_matches_the_java_client_vectors() -> None:
    keys = [k.encode() for k in JAVA_VECTORS]
    got = murmur2(keys).astype(np.int64)
    got = np.where(got >= 2**31, got - 2**32, got)
    assert got.tolist() == list(JAVA_VECTORS.values())


def test_murmur2_matches_the_client_for_every_length_and_byte() -> None:
    rng = random.Random(7)
    keys = [b"", b"\x00", b"a\x00", b"\x00" * 5, "ünï-çödé-𝄞".encode()]
    keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 41))) for _ in range(2000)]
    assert murmur2(keys).tolist() == [client_murmur2(k) & 0xFFFFFFFF for k in keys]


def test_key_partitions_match_the_default_partitioner() -> None:
    keys = [f"item-{i}".encode() for i in range(1000)]
    partitions = {3, 0, 2, 1, 5, 4}
    expected = [(client_murmur2(k) & 0x7FFFFFFF) % 6 for k in keys]
    assert key_partitions(keys, partitions).tolist() == expected


def test_empty_batch_and_topic_without_partitions() -> None:
    assert key_partitions([], {0, 1}).size == 0
    with pytest.raises(ValueError, match="no partitions"):
        key_partitions([b"a"], set())


def test_a_text_key_hashes_as_its_utf8() -> None:
    texts = ["", "a", "item-1", "ünï-çödé-𝄞", "x" * 41] + [f"item-{i}" for i in range(500)]
    assert murmur2(texts).tolist() == murmur2([t.encode("utf-8") for t in texts]).tolist()
    expected = [(client_murmur2(t.encode()) & 0x7FFFFFFF) % 3 for t in texts]
    assert key_partitions(texts, {0, 1, 2}).tolist() == expected
