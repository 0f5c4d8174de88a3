"""The project's own Kafka broker: it answers, keeps data across a restart, and caches its jars."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer

from stream.broker import BrokerConfig, ensure_kafka_jars


def _roundtrip(bootstrap: str, topic: str, values: list[bytes]) -> list[bytes]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < len(values) and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                got.extend(r.value for r in recs)
    finally:
        consumer.close()
    return got


def test_message_produced_is_consumed_back(bootstrap, topic_factory):
    topic = topic_factory(partitions=1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(10):
        producer.send(topic, value=f"m{i}".encode())
    producer.flush()
    producer.close()
    assert _roundtrip(bootstrap, topic, [b""] * 10) == [f"m{i}".encode() for i in range(10)]


def test_restart_keeps_topics_and_data(local_broker, topic_factory):
    topic = topic_factory(partitions=2)
    producer = KafkaProducer(bootstrap_servers=local_broker.bootstrap, acks="all")
    producer.send(topic, value=b"before", partition=1)
    producer.flush()
    producer.close()
    local_broker.restart()
    assert _roundtrip(local_broker.bootstrap, topic, [b"before"]) == [b"before"]


def test_cached_jars_are_not_fetched_again():
    t0 = time.monotonic()
    libs = ensure_kafka_jars(BrokerConfig())
    assert any(libs.glob("kafka_2.13-*.jar"))
    assert time.monotonic() - t0 < 1.0
