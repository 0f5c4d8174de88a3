"""Publish: one bucket's forecast messages sent and acknowledged, mqcast's publisher against the bare client.

Both sides send the same keyed forecast messages (the service's size and format) to the same
4-partition topic through an idempotent ``acks=all`` producer with the service's settings, in
alternating rounds, and wait until the broker has acknowledged all of them:

- bare client: a loop of ``KafkaProducer.send`` (kafka-python's own partitioner), then ``flush``;
- the same loop with each message's partition given, hashed for the whole batch at once (how the
  publisher sent before it appended in bulk);
- publisher: :meth:`stream.publish.Publisher.forecasts` (the partitions hashed for the whole batch,
  the records appended in bulk by :mod:`stream.bulk_send`), then ``flush``.

The append is timed apart from the wait for acknowledgements, which is the broker's and the
network's share.
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from bench.common import bootstrap_server, machine, table
from stream.config import positive_int
from stream.partitioner import key_partitions
from stream.publish import ForecastFormat, Publisher, encode_forecasts

PARTITIONS = 4


def _producer(bootstrap: str) -> KafkaProducer:
    # The service's producer settings (stream/service.py), without a transaction.
    return KafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5, batch_size=256 * 1024
    )


def _messages(n: int) -> tuple[list[str], list[bytes]]:
    fmt = ForecastFormat("D", "bench", (0.1, 0.5, 0.9), 14)
    shape = (n, fmt.horizons, len(fmt.quantiles))
    values = np.random.default_rng(0).gamma(1.0, 3.0, shape).astype(np.float32)
    items = [f"item-{i:07d}" for i in range(n)]
    return items, encode_forecasts(fmt, items, 20_000, np.sort(values, axis=-1), int(time.time() * 1000))


def _bare(
    producer: KafkaProducer, topic: str, items: list[str], messages: list[bytes]
) -> tuple[float, float]:
    t0 = time.perf_counter()
    send = producer.send
    for item, msg in zip(items, messages, strict=True):
        send(topic, value=msg, key=item.encode("utf-8"))
    t1 = time.perf_counter()
    producer.flush()
    return t1 - t0, time.perf_counter() - t0


def _hashed(
    producer: KafkaProducer, topic: str, items: list[str], messages: list[bytes]
) -> tuple[float, float]:
    """A send per message to a partition hashed for the whole batch (the publisher before bulk append)."""
    t0 = time.perf_counter()
    keys = [item.encode("utf-8") for item in items]
    partitions = key_partitions(keys, producer.partitions_for(topic)).tolist()
    send = producer.send
    for key, msg, partition in zip(keys, messages, partitions, strict=True):
        send(topic, value=msg, key=key, partition=partition)
    t1 = time.perf_counter()
    producer.flush()
    return t1 - t0, time.perf_counter() - t0


def _ours(publisher: Publisher, items: list[str], messages: list[bytes]) -> tuple[float, float]:
    t0 = time.perf_counter()
    publisher.forecasts(items, messages)
    t1 = time.perf_counter()
    publisher.flush()
    return t1 - t0, time.perf_counter() - t0


def run(sizes: list[int], rounds: int) -> list[tuple[str, str]]:
    """Best-of-``rounds`` append and acknowledged times for each batch size, both sides."""
    rows: list[tuple[str, str]] = []
    with bootstrap_server() as bootstrap:
        topic = f"bench-publish-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        finally:
            admin.close()
        bare_producer, our_producer = _producer(bootstrap), _producer(bootstrap)
        publisher = Publisher(our_producer, topic, f"{topic}-dead-letters")
        try:
            for p in (bare_producer, our_producer):
                p.partitions_for(topic)
            for n in sizes:
                items, messages = _messages(n)
                size = sum(map(len, messages)) / n
                bare, hashed, ours = [], [], []
                for _ in range(rounds):
                    bare.append(_bare(bare_producer, topic, items, messages))
                    hashed.append(_hashed(bare_producer, topic, items, messages))
                    ours.append(_ours(publisher, items, messages))
                b_send, b_total = min(s for s, _ in bare), min(t for _, t in bare)
                h_send, h_total = min(s for s, _ in hashed), min(t for _, t in hashed)
                o_send, o_total = min(s for s, _ in ours), min(t for _, t in ours)
                rows += [
                    (
                        f"{n:,} messages ({size:.0f} B each): bare send loop",
                        f"append {1e6 * b_send / n:.2f} us/msg; acknowledged {1e3 * b_total:.0f} ms "
                        f"({n / b_total:,.0f} msg/s)",
                    ),
                    (
                        f"{n:,} messages: send loop, partitions hashed per batch",
                        f"append {1e6 * h_send / n:.2f} us/msg; acknowledged {1e3 * h_total:.0f} ms "
                        f"({n / h_total:,.0f} msg/s)",
                    ),
                    (
                        f"{n:,} messages: publisher (bulk append)",
                        f"append {1e6 * o_send / n:.2f} us/msg; acknowledged {1e3 * o_total:.0f} ms "
                        f"({n / o_total:,.0f} msg/s); bare / ours: append {b_send / o_send:.1f}x, "
                        f"acknowledged {b_total / o_total:.1f}x; hashed / ours: acknowledged "
                        f"{h_total / o_total:.1f}x",
                    ),
                ]
        finally:
            bare_producer.close()
            our_producer.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--messages",
        type=lambda text: [positive_int(x) for x in text.split(",")],
        default=[1_000, 10_000, 100_000],
        help="forecast messages per batch, comma-separated (default: 1000,10000,100000)",
    )
    p.add_argument(
        "--rounds", type=positive_int, default=3, help="alternating rounds of each side (best is kept)"
    )
    a = p.parse_args(argv)
    print(table(run(a.messages, a.rounds), f"Publish ({machine()})"))


if __name__ == "__main__":
    main()
