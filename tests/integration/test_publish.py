"""Forecasts sent in bulk reach the broker whole, in order and in the default partitioner's partition."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.structs import TopicPartition

from stream.errors import PublishError
from stream.partitioner import key_partitions
from stream.publish import Publisher


def _consume(bootstrap: str, topic: str, partitions: int, n: int) -> dict[int, list[tuple[bytes, bytes]]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    got: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    deadline = time.monotonic() + 30
    try:
        while sum(map(len, got.values())) < n and time.monotonic() < deadline:
            for tp, recs in consumer.poll(timeout_ms=500).items():
                got[tp.partition].extend((r.key, r.value) for r in recs)
    finally:
        consumer.close()
    return got


def _producer(bootstrap: str, **extra) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5, **extra
    )


def test_bulk_sent_forecasts_arrive_in_order_in_their_keys_partitions(bootstrap, topic_factory):
    topic = topic_factory(partitions=4)
    producer = _producer(bootstrap, batch_size=16 * 1024)  # small batches: many per partition
    publisher = Publisher(producer, topic, "unused-dead-letters")
    rng = np.random.default_rng(0)
    rounds = []
    try:
        for r in range(3):
            items = [f"item-{i}" for i in rng.permutation(2000)]
            pads = rng.integers(0, 600, len(items)).tolist()
            messages = [f"{r} {i}".encode() + b" " * n for i, n in zip(items, pads, strict=True)]
            lasts = publisher.forecasts(items, messages)
            assert len(lasts) == 4
            rounds.append((items, messages))
        assert publisher.flush() >= 12
        assert all(f.succeeded() for f in lasts)
    finally:
        producer.close()
    got = _consume(bootstrap, topic, 4, 6000)
    expected: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for items, messages in rounds:
        keys = [i.encode() for i in items]
        for key, msg, p in zip(keys, messages, key_partitions(keys, set(range(4))).tolist(), strict=True):
            expected[p].append((key, msg))
    assert got == expected


# kafka-python's KafkaProducer.__del__ closes the producer again, and that close's flush fails the
# same way; it is reported as an unraisable exception at garbage collection.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_batch_the_broker_refuses_as_too_large_is_not_called_acknowledged(bootstrap, topic_factory):
    # The producer splits such a batch and sends its halves as batches of its own: the forecasts
    # may well arrive, but the batches this call wrote to are never completed, so flush must not
    # pass (kafka-python's own flush gives up on them too).
    topic = topic_factory(partitions=1, configs={"max.message.bytes": "4096"})
    producer = _producer(bootstrap, batch_size=64 * 1024)
    publisher = Publisher(producer, topic, "unused-dead-letters")
    try:
        items = [f"item-{i}" for i in range(200)]
        publisher.forecasts(items, [b"x" * 500 for _ in items])
        with pytest.raises(PublishError):
            publisher.flush(timeout_s=30)
    finally:
        with contextlib.suppress(KafkaError):  # close flushes, which fails the same way
            producer.close(timeout=0)


def test_a_message_over_the_request_size_is_refused_before_anything_is_appended(bootstrap, topic_factory):
    topic = topic_factory(partitions=2)
    producer = _producer(bootstrap, max_request_size=10_000)
    publisher = Publisher(producer, topic, "unused-dead-letters")
    try:
        with pytest.raises(MessageSizeTooLargeError):
            publisher.forecasts(["a", "b", "c"], [b"x" * 100, b"y" * 20_000, b"z" * 100])
        with pytest.raises(MessageSizeTooLargeError):  # the key counts too, as its UTF-8
            publisher.forecasts(["a", "é" * 6_000, "c"], [b"x" * 100, b"y" * 100, b"z" * 100])
        assert publisher.in_flight == 0
        assert not any(producer._accumulator._batches.values())
    finally:
        producer.close()
