"""Replaying an events file puts every event on the sales topic, in its key's partition, in order."""

from __future__ import annotations

import time
from collections import defaultdict

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from stream.partitioner import key_partitions
from stream.replay import load_events, replay


def test_replay_sends_every_event_to_its_items_partition_in_time_order(bootstrap, topic_factory, tmp_path):
    topic = topic_factory(partitions=3)
    lines = ["item_id,ts,qty,price"]
    for i in range(2500):  # several replay chunks, several items per partition
        lines.append(f"sku-{i % 37},{1_700_000_000_000 + 60_000 * i},{1 + i % 4},{2.5 + i % 3}")
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        assert replay(load_events(path), producer, topic, progress=False) == 2500
    finally:
        producer.close()

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    consumer.assign([TopicPartition(topic, p) for p in range(3)])
    got: dict[int, list[dict]] = defaultdict(list)
    deadline = time.monotonic() + 30
    try:
        while sum(map(len, got.values())) < 2500 and time.monotonic() < deadline:
            for tp, recs in consumer.poll(timeout_ms=500).items():
                for r in recs:
                    event = orjson.loads(r.value)
                    assert r.key == event["item_id"].encode()
                    got[tp.partition].append(event)
    finally:
        consumer.close()
    assert sum(map(len, got.values())) == 2500
    for partition, events in got.items():
        items = sorted({e["item_id"] for e in events})
        expected = key_partitions([i.encode() for i in items], {0, 1, 2})
        assert set(expected.tolist()) == {partition}
        assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    first = min((e for es in got.values() for e in es), key=lambda e: e["ts"])
    assert first == {"item_id": "sku-0", "ts": 1_700_000_000_000, "qty": 1.0, "price": 2.5}
