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
from collections.abc import Callable
from functools import partial

import numpy as np
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from bench.common import bootstrap_server, machine, positive_int_list, table
from stream.config import positive_int
from stream.partitioner import key_partitions
from stream.publish import PRODUCER_SETTINGS, ForecastFormat, Publisher, encode_forecasts

PARTITIONS = 4


def _messages(n: int) -> tuple[list[str], list[bytes]]:
    fmt = ForecastFormat("D", "bench", (0.1, 0.5, 0.9), 14)
    shape = (n, fmt.horizons, len(fmt.quantiles))
    values = np.random.default_rng(0).gamma(1.0, 3.0, shape).astype(np.float32)
    items = [f"item-{i:07d}" for i in range(n)]
    return items, encode_forecasts(fmt, items, 20_000, np.sort(values, axis=-1), int(time.time() * 1000))


def _bare(producer: KafkaProducer, topic: str, items: list[str], messages: list[bytes]) -> None:
    send = producer.send
    for item, msg in zip(items, messages, strict=True):
        send(topic, value=msg, key=item.encode("utf-8"))


def _hashed(producer: KafkaProducer, topic: str, items: list[str], messages: list[bytes]) -> None:
    """A send per message to a partition hashed for the whole batch (the publisher before bulk append)."""
    keys = [item.encode("utf-8") for item in items]
    partitions = key_partitions(keys, producer.partitions_for(topic)).tolist()
    send = producer.send
    for key, msg, partition in zip(keys, messages, partitions, strict=True):
        send(topic, value=msg, key=key, partition=partition)


def _timed(send: Callable[[], object], flush: Callable[[], object]) -> tuple[float, float]:
    """Seconds to append (``send``), and to have everything acknowledged (``send`` then ``flush``)."""
    t0 = time.perf_counter()
    send()
    t1 = time.perf_counter()
    flush()
    return t1 - t0, time.perf_counter() - t0


def run(sizes: list[int], rounds: int) -> list[tuple[str, str]]:
    """Best-of-``rounds`` append and acknowledged times for each batch size, every side."""
    rows: list[tuple[str, str]] = []
    with bootstrap_server() as bootstrap:
        topic = f"bench-publish-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        finally:
            admin.close()
        bare_producer = KafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_SETTINGS)
        our_producer = KafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_SETTINGS)
        publisher = Publisher(our_producer, topic, f"{topic}-dead-letters")
        try:
            for p in (bare_producer, our_producer):
                p.partitions_for(topic)
            for n in sizes:
                items, messages = _messages(n)
                sides = {
                    f"{n:,} messages ({sum(map(len, messages)) / n:.0f} B each): bare send loop": (
                        partial(_bare, bare_producer, topic, items, messages),
                        bare_producer.flush,
                    ),
                    f"{n:,} messages: send loop, partitions hashed per batch": (
                        partial(_hashed, bare_producer, topic, items, messages),
                        bare_producer.flush,
                    ),
                    f"{n:,} messages: publisher (bulk append)": (
                        partial(publisher.forecasts, items, messages),
                        publisher.flush,
                    ),
                }
                times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
                for _ in range(rounds):
                    for name, (send, flush) in sides.items():
                        times[name].append(_timed(send, flush))
                best = [(min(s for s, _ in t), min(a for _, a in t)) for t in times.values()]
                (b_send, b_acked), (_, h_acked), (o_send, o_acked) = best
                ratios = (
                    f"; bare / ours: append {b_send / o_send:.1f}x, acknowledged {b_acked / o_acked:.1f}x; "
                    f"hashed / ours: acknowledged {h_acked / o_acked:.1f}x"
                )
                for k, (name, (send_s, acked_s)) in enumerate(zip(sides, best, strict=True)):
                    figure = (
                        f"append {1e6 * send_s / n:.2f} us/msg; acknowledged {1e3 * acked_s:.0f} ms "
                        f"({n / acked_s:,.0f} msg/s)"
                    )
                    rows.append((name, figure + (ratios if k == len(sides) - 1 else "")))
        finally:
            bare_producer.close()
            our_producer.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--messages",
        type=positive_int_list,
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
