"""End-to-end latency: from a bucket closing to its forecasts being acknowledged, at a steady load.

A replay process sends events for ``--items`` items, every item selling every day, with event time
running ``--days-per-second`` days per wall second; so ``items x days-per-second`` item-buckets close
per second. The service runs in this process on a 4-partition topic; the latency of every
micro-batch is recorded when the broker acknowledges it.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from bench.common import bootstrap_server, default_model, machine, table
from stream.batcher import BatcherConfig
from stream.config import DurabilityConfig, KafkaConfig, MetricsConfig, ModelServeConfig, ServiceConfig
from stream.inference import Predictor
from stream.service import ForecastService, ServiceObserver
from stream.topics import ensure_topics, service_topics

DAY = 86_400_000


class Latencies(ServiceObserver):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_published(self, latencies_s: list[float], rows: int) -> None:
        self.values.extend(latencies_s)


def _write_events(path: Path, items: int, days: int) -> int:
    t0 = 1_600_000_000_000 - 1_600_000_000_000 % DAY
    rng = np.random.default_rng(0)
    n = 0
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "ts", "qty", "price"])
        for d in range(days):
            offsets = np.sort(rng.integers(0, DAY, items))
            for i, off in enumerate(offsets.tolist()):
                w.writerow([f"item-{i}", t0 + d * DAY + off, 1 + (i + d) % 3, 2.5])
                n += 1
    return n


def run(
    items: int, days: int, days_per_second: float, max_batch: int, max_delay_ms: float
) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp, bootstrap_server() as bootstrap:
        events = Path(tmp) / "events.csv"
        n_events = _write_events(events, items, days)
        suffix = str(int(time.time()))
        kafka = KafkaConfig(
            bootstrap=bootstrap,
            sales_topic=f"lat-sales-{suffix}",
            forecast_topic=f"lat-fc-{suffix}",
            dead_letter_topic=f"lat-dlq-{suffix}",
            group_id=f"lat-{suffix}",
        )
        ensure_topics(
            bootstrap, service_topics(kafka.sales_topic, kafka.forecast_topic, kafka.dead_letter_topic, 4)
        )
        model = default_model(Path(tmp))
        cfg = ServiceConfig(
            kafka=kafka,
            model=ModelServeConfig(path=model, device="auto"),
            batcher=BatcherConfig(max_batch=max_batch, max_delay_ms=max_delay_ms),
            metrics=MetricsConfig(port=0),
            durability=DurabilityConfig(changelog=False),
        )
        obs = Latencies()
        service = ForecastService(cfg, Predictor.load(model, "auto"), CollectorRegistry(), observer=obs)
        # Join the group before the load starts, so the first second is not a rebalance.
        for _ in range(20):
            service.poll_once()
        replay = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream.cli",
                "replay",
                str(events),
                "--bootstrap",
                bootstrap,
                "--sales-topic",
                kafka.sales_topic,
                "--speed",
                str(days_per_second * 86400),
                "--no-progress",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        t0 = time.monotonic()
        idle = None
        while True:
            n = service.poll_once()
            if n:
                idle = None
            elif replay.poll() is not None:
                idle = idle or time.monotonic()
                if time.monotonic() - idle > 3:
                    break
        elapsed = time.monotonic() - t0
        service.close()
        if replay.returncode:
            raise SystemExit(replay.stderr.read().decode() if replay.stderr else "replay failed")
    lat = np.array(obs.values) * 1000
    closes_per_s = service.stats.forecasts / elapsed
    return [
        (
            "load",
            f"{items:,} items x {days} days, {days_per_second:g} days/s -> {items * days_per_second:,.0f} "
            "item-buckets closing per s",
        ),
        ("events", f"{n_events:,} in {elapsed:.1f} s ({service.stats.events / elapsed:,.0f}/s)"),
        ("forecasts published", f"{service.stats.forecasts:,} ({closes_per_s:,.0f}/s)"),
        ("micro-batches", f"{lat.size:,} (max {max_batch}, max delay {max_delay_ms:g} ms)"),
        ("close -> ack latency p50", f"{np.percentile(lat, 50):.0f} ms"),
        ("close -> ack latency p99 (target < 250 ms)", f"{np.percentile(lat, 99):.0f} ms"),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--days-per-second", type=float, default=1.0)
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--max-delay-ms", type=float, default=20.0)
    a = p.parse_args(argv)
    rows = run(a.items, a.days, a.days_per_second, a.max_batch, a.max_delay_ms)
    print(table(rows, f"End-to-end latency ({machine()})"))


if __name__ == "__main__":
    main()
