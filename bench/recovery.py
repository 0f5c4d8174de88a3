"""Recovery: how long restoring a partition's state takes, and how many changelog bytes an item costs.

A partition with ``--items`` items and a full context of history is snapshotted to a changelog
topic on a real broker (the write a checkpoint does), then read back and restored (what a new owner
does on assignment). The service's loop waits while a checkpoint's snapshots are encoded, and
writes them beside it (``stream.snapshot_writer``); it spaces checkpoints by the time one takes
(``DurabilityConfig.checkpoint_share``). The table says how far apart, and how long the loop waits.
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
from kafka import KafkaProducer

from bench.common import bootstrap_server, machine, table
from state.config import StateConfig
from state.partition import PartitionState
from state.snapshot import restore, snapshot
from stream.changelog import Changelog
from stream.config import DurabilityConfig
from stream.service import checkpoint_spacing
from stream.topics import TopicSpec, ensure_topics

DAY = 86_400_000


def _filled_state(n_items: int, cfg: StateConfig) -> PartitionState:
    rng = np.random.default_rng(0)
    s = PartitionState(cfg)
    ids = np.array([f"item-{i:07d}" for i in range(n_items)], dtype=object)
    s.ingest(ids, np.full(n_items, DAY + 3_600_000), np.ones(n_items), np.full(n_items, 2.0))
    for d in range(2, 2 + cfg.horizons + 1):
        sel = rng.random(n_items) < 0.2
        s.ingest(
            ids[sel], np.full(sel.sum(), d * DAY + 3_600_000), np.ones(sel.sum()), np.full(sel.sum(), 2.0)
        )
        while s.closable() is not None:
            c = s.close_next()
            if c.rows.size:
                s.record_forecasts(c.bucket, c.rows, np.ones((c.rows.size, cfg.horizons, 3), np.float32))
    return s


def run(sizes: list[int]) -> list[tuple[str, str]]:
    cfg = StateConfig()
    defaults = DurabilityConfig()
    interval_s = defaults.checkpoint_interval_ms / 1000
    policy = f"every {interval_s:g} s, at most {defaults.checkpoint_share:.0%} of the time"
    rows = []
    with bootstrap_server() as bootstrap:
        for n in sizes:
            state = _filled_state(n, cfg)
            topic = f"bench-changelog-{uuid.uuid4().hex[:8]}"
            ensure_topics(
                bootstrap,
                [TopicSpec(topic, 1, {"cleanup.policy": "compact", "max.message.bytes": "1048576"})],
            )
            producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                linger_ms=5,
                batch_size=256 * 1024,
                max_request_size=1 << 21,
            )
            log = Changelog(producer, bootstrap, topic)
            t0 = time.perf_counter()
            data = snapshot(state, 12345)
            t_snap = time.perf_counter() - t0
            _, futures = log.write(0, data, 12345)
            producer.flush()
            for f in futures:
                if f.failed():
                    raise SystemExit(f"changelog write failed: {f.exception!r}")
            t_write = time.perf_counter() - t0
            # How far apart the service puts its checkpoints of such a partition (by the time from
            # encoding to the last acknowledgement, as here).
            spacing = checkpoint_spacing(interval_s, t_write, defaults.checkpoint_share)
            producer.close()
            t0 = time.perf_counter()
            found = log.read_latest(0, timeout_s=1800)
            t_read = time.perf_counter() - t0
            assert found is not None
            restored, offset = restore(found[0], cfg)
            t_restore = time.perf_counter() - t0
            assert offset == 12345 and restored.n_items == n
            rows += [
                (f"{n:,} items: changelog bytes per item", f"{len(data) / n:,.0f}"),
                (f"{n:,} items: snapshot + write", f"{t_write:.1f} s (encode {t_snap:.1f} s)"),
                (f"{n:,} items: read back + restore", f"{t_restore:.1f} s (read {t_read:.1f} s)"),
                (
                    f"{n:,} items: checkpoints at the defaults ({policy})",
                    f"one every {spacing:.0f} s, each holding the loop {t_snap:.1f} s (the encoding)",
                ),
            ]
            del state, restored, data, found
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", default="100000,1000000", help="comma-separated partition sizes")
    a = p.parse_args(argv)
    print(table(run([int(x) for x in a.items.split(",")]), f"Recovery ({machine()})"))


if __name__ == "__main__":
    main()
