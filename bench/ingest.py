"""Ingest: events/s through consume -> decode -> validate -> state update, against the bare client.

All read the same topic in the same run, in alternating rounds: the bare kafka-python consumer (the
ceiling for this client), the same consumer feeding mqcast's decoding only, and feeding decoding and
the per-partition state (what the service does), so the table also says where our time goes. The
state is measured fresh (a new service: every item's rows are made as it first appears) and with
the items already known (a running or restored service, where that cost has been paid).
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from bench.common import bootstrap_server, machine, synthetic_events, table
from state.config import StateConfig
from state.partition import PartitionState
from stream.config import positive_int
from stream.decode import TimestampCache, decode_events


def _consumer(bootstrap: str, topic: str) -> KafkaConsumer:
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=2000,
        fetch_max_bytes=52428800,
        max_partition_fetch_bytes=8 * 1048576,
    )


def _read_all(bootstrap: str, topic: str, n: int, handle) -> float:
    consumer = _consumer(bootstrap, topic)
    try:
        return _drain(consumer, n, handle)
    finally:
        consumer.close()


def _drain(consumer: KafkaConsumer, n: int, handle) -> float:
    got = 0
    t0 = None
    deadline = time.monotonic() + 600
    while got < n and time.monotonic() < deadline:
        for tp, recs in consumer.poll(timeout_ms=1000, max_records=2000).items():
            if t0 is None:
                t0 = time.perf_counter()
            handle(tp, recs)
            got += len(recs)
    return got / (time.perf_counter() - (t0 or time.perf_counter()))


def run(n_events: int, n_items: int, partitions: int, rounds: int = 3) -> list[tuple[str, str]]:
    with bootstrap_server() as bootstrap:
        topic = f"bench-ingest-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(topic, partitions, 1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20)
        for v in synthetic_events(n_events, n_items, days=30):
            producer.send(topic, value=v, key=v[12:24])
        producer.flush()
        producer.close()

        cfg = StateConfig()
        cache = TimestampCache()

        def decode_only(tp, recs) -> None:
            decode_events([r.value for r in recs], cache)

        known: dict[int, np.ndarray] = {}  # each partition's item ids, from the first full round

        def ours_round(warm: bool) -> float:
            # Cold: a fresh state, as a new service has, so every item's rows are made on the way.
            # Warm: the items already have rows (as after a restore, or once each has sold once).
            states: dict[int, PartitionState] = {}
            for partition, ids in known.items() if warm else ():
                states[partition] = PartitionState(cfg, partition)
                states[partition].rows_for(ids)

            def handle(tp, recs) -> None:
                batch = decode_events([r.value for r in recs], cache)
                state = states.get(tp.partition)
                if state is None:
                    state = states[tp.partition] = PartitionState(cfg, tp.partition)
                state.ingest(batch.item_ids, batch.event_ms, batch.qty, batch.price)

            rate = _read_all(bootstrap, topic, n_events, handle)
            if not known:
                known.update({p: st.ids[: st.n_items].copy() for p, st in states.items()})
            return rate

        # Alternate the variants, best of each: the machine is shared, and a slow moment should not
        # land on one side only. The decoding-only variant says where our time goes.
        raw_rates, decode_rates, cold_rates, warm_rates = [], [], [], []
        for _ in range(rounds):
            raw_rates.append(_read_all(bootstrap, topic, n_events, lambda tp, recs: None))
            decode_rates.append(_read_all(bootstrap, topic, n_events, decode_only))
            cold_rates.append(ours_round(warm=False))
            warm_rates.append(ours_round(warm=True))
        raw_rate, decode_rate = max(raw_rates), max(decode_rates)
        ours_rate, warm_rate = max(cold_rates), max(warm_rates)
    us = [1e6 / r for r in (raw_rate, decode_rate, ours_rate, warm_rate)]
    return [
        ("events", f"{n_events:,} over {n_items:,} items, {partitions} partitions"),
        ("bare kafka-python consume (best of rounds)", f"{raw_rate:,.0f} events/s ({us[0]:.2f} µs/event)"),
        (
            "consume + decode + validate (best of rounds)",
            f"{decode_rate:,.0f} events/s ({us[1]:.2f} µs/event)",
        ),
        (
            "consume + decode + validate + state (best of rounds)",
            f"{ours_rate:,.0f} events/s ({us[2]:.2f} µs/event)",
        ),
        (
            "the same, items known (best of rounds)",
            f"{warm_rate:,.0f} events/s ({us[3]:.2f} µs/event)",
        ),
        (
            "per event: decode / state / state, items known",
            f"{us[1] - us[0]:.2f} / {us[2] - us[1]:.2f} / {us[3] - us[1]:.2f} µs",
        ),
        ("rounds, alternating", str(rounds)),
        (
            "ratio (target >= 0.8): fresh state / items known",
            f"{ours_rate / raw_rate:.2f} / {warm_rate / raw_rate:.2f}",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=positive_int, default=300_000, help="events produced (default: 300000)")
    p.add_argument("--items", type=positive_int, default=20_000, help="distinct items (default: 20000)")
    p.add_argument("--partitions", type=positive_int, default=4, help="partitions of the topic (default: 4)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side (best is reported)")
    a = p.parse_args(argv)
    print(table(run(a.events, a.items, a.partitions, a.rounds), f"Ingest ({machine()})"))


if __name__ == "__main__":
    main()
