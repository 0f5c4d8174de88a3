"""End-to-end latency: from a bucket closing to its forecasts being acknowledged, at a steady load.

A replay process sends events for ``--items`` items, every item selling every day, with event time
running ``--days-per-second`` days per wall second; so ``items x days-per-second`` item-buckets close
per second. The service runs on a 4-partition topic, as ``--members`` members of one consumer group
(each its own process, sharing the cores); each partition's closed bucket counts from the moment it
closed to the broker's acknowledgement of its last forecast. Each member snapshots its partitions'
state to the changelog topic as the service does by default (``--changelog off`` leaves that out),
so the checkpoints that hold its loop fall within the load. Several loads (``--items
2500,5000,10000``) give a latency curve, one table each, against one broker.
"""

from __future__ import annotations

import argparse
import csv
import gc
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
import torch
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from bench.common import bootstrap_server, default_model, gather, machine, positive_int_list, table
from model.export import load_model
from state.partition import ClosedBucket
from stream.batcher import BatcherConfig
from stream.config import (
    DurabilityConfig,
    KafkaConfig,
    MetricsConfig,
    ModelServeConfig,
    ServiceConfig,
    positive_int,
)
from stream.inference import Predictor, default_workers, pick_device
from stream.publish import PRODUCER_SETTINGS, ForecastFormat, encode_forecasts
from stream.service import ForecastService, ServiceObserver
from stream.topics import ensure_topics, service_topics

DAY = 86_400_000
PARTITIONS = 4


class CollectorPauses:
    """Times every pass of Python's garbage collector in this process (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.passes: list[tuple[int, float]] = []  # (generation, seconds)
        self._start = 0.0
        gc.callbacks.append(self._on_pass)

    def _on_pass(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.passes.append((int(info["generation"]), time.perf_counter() - self._start))


class Latencies(ServiceObserver):
    """Each published request's latency, and whether it came after the member's first closed day.

    The first day boundary after a start also meets the fresh topics' first writes and the
    producer's first requests, so the steady-state figures leave it out, the overall ones keep it,
    and a row of its own shows it. It was where the target was missed, 150-300 ms waiting for
    acknowledgements, until the forecast topic was made with a small segment index
    (``stream.topics.FORECAST_TOPIC_CONFIGS`` says why).
    """

    def __init__(self) -> None:
        self.values: list[float] = []
        self.steady: list[bool] = []
        # Where each latency went (on_turn): queued before its turn, and its turn's forecasting /
        # sending and wait for acknowledgements, one entry per latency.
        self.queued: list[float] = []
        self.forecast: list[float] = []
        self.flush: list[float] = []
        self._buckets: set[int] = set()

    def on_forecasts(self, partition: int, closed: ClosedBucket, values: np.ndarray) -> None:
        self._buckets.add(closed.bucket)  # on_close would also count buckets that closed empty

    def on_published(self, latencies_s: list[float], rows: int) -> None:
        self.values.extend(latencies_s)
        self.steady.extend([len(self._buckets) > 1] * len(latencies_s))

    def on_turn(self, queued_s: list[float], forecast_s: float, flush_s: float) -> None:
        self.queued.extend(queued_s)
        self.forecast.extend([forecast_s] * len(queued_s))
        self.flush.extend([flush_s] * len(queued_s))


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


def _member(cfg: ServiceConfig, threads: int, go: Event, stop: Event, results: mp.Queue) -> None:
    """One member of the group in its own process: joins, waits for the others, then serves until
    ``stop``; reports its latencies, counts and the first and last moments it read events."""
    torch.set_num_threads(threads)
    pauses = CollectorPauses()
    obs = Latencies()
    predictor = Predictor.load(cfg.model.path, "auto", workers=cfg.model.workers)
    service = ForecastService(cfg, predictor, CollectorRegistry(), observer=obs)
    deadline = time.monotonic() + 120
    while not service.consumer.assignment() and time.monotonic() < deadline:
        service.poll_once()
    results.put("ready")
    go.wait()
    pauses.passes.clear()  # the load's passes only
    first = last = None
    while not stop.is_set():
        if service.poll_once():
            first, last = first or time.monotonic(), time.monotonic()
    # The load's checkpoints (how many, their seconds, the loop's part), before close() writes one more.
    names = (
        "mqcast_checkpoint_seconds_count",
        "mqcast_checkpoint_seconds_sum",
        "mqcast_checkpoint_hold_seconds_sum",
    )
    checkpoints = tuple(service.registry.get_sample_value(n) or 0.0 for n in names)
    service.close()
    stats = service.stats
    phases = (obs.queued, obs.forecast, obs.flush)
    report = (obs.values, stats.events, stats.forecasts, first, last, pauses.passes, obs.steady, phases)
    results.put((*report, checkpoints))


def run(
    bootstrap: str,
    items: int,
    days: int,
    days_per_second: float,
    max_batch: int,
    max_delay_ms: float,
    members: int = 1,
    workers: int = 0,
    changelog: bool = True,
) -> list[tuple[str, str]]:
    """One load: ``items`` items closing ``days_per_second`` times a second, for ``days`` days,
    served by ``members`` members of one consumer group, each in its own process with ``workers``
    model threads (0: the service's default); with ``changelog``, state snapshotted to the
    changelog topic as the service does by default."""
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.csv"
        n_events = _write_events(events, items, days)
        suffix = f"{int(time.time())}-{items}-{members}"
        kafka = KafkaConfig(
            bootstrap=bootstrap,
            sales_topic=f"lat-sales-{suffix}",
            forecast_topic=f"lat-fc-{suffix}",
            dead_letter_topic=f"lat-dlq-{suffix}",
            group_id=f"lat-{suffix}",
        )
        ensure_topics(
            bootstrap,
            service_topics(kafka.sales_topic, kafka.forecast_topic, kafka.dead_letter_topic, PARTITIONS),
        )
        model = default_model(Path(tmp))
        cfg = ServiceConfig(
            kafka=kafka,
            model=ModelServeConfig(path=model, device="auto", workers=workers),
            batcher=BatcherConfig(max_batch=max_batch, max_delay_ms=max_delay_ms),
            metrics=MetricsConfig(port=0),
            durability=DurabilityConfig(changelog=changelog),
        )
        # Spawned, not forked: a forked child would inherit torch's and the client's threads' state.
        ctx = mp.get_context("spawn")
        go, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
        threads = max(1, (os.cpu_count() or 1) // members)
        procs = [
            ctx.Process(target=_member, args=(cfg, threads, go, stop, results), daemon=True)
            for _ in range(members)
        ]
        for proc in procs:
            proc.start()
        # Once every member has joined, a few seconds more let the last rebalance finish before the load.
        gather(results, procs, 180)
        go.set()
        time.sleep(5)
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
        replay.wait(timeout=days / days_per_second + 600)
        time.sleep(3)
        stop.set()
        reports = gather(results, procs, 120)
        for proc in procs:
            proc.join(timeout=60)
        if replay.returncode:
            raise SystemExit(replay.stderr.read().decode() if replay.stderr else "replay failed")
        firsts = [r[3] for r in reports if r[3] is not None]
        lasts = [r[4] for r in reports if r[4] is not None]
        elapsed = max(lasts) - min(firsts) if firsts else float("nan")
        n_read = sum(r[1] for r in reports)
        n_forecasts = sum(r[2] for r in reports)
        n_checkpoints = sum(r[8][0] for r in reports)
        checkpoint_s = sum(r[8][1] for r in reports)
        checkpoint_held_s = sum(r[8][2] for r in reports)
        floor_ms = _bare_producer_ms(bootstrap, kafka.forecast_topic, items, _forecast_message(model))
    lat = np.concatenate([np.asarray(r[0], dtype=np.float64) for r in reports]) * 1000
    is_steady = np.concatenate([np.asarray(r[6], dtype=bool) for r in reports])
    steady = lat[is_steady]
    queued, forecast, flush = (
        np.concatenate([np.asarray(r[7][k], dtype=np.float64) for r in reports]) * 1000 for k in range(3)
    )
    passes = [p for r in reports for p in r[5]]
    full = sorted((sec * 1000 for gen, sec in passes if gen == 2), reverse=True)
    longest = ", longest " + ", ".join(f"{x:.0f}" for x in full[:5]) + " ms" if full else ""
    return [
        (
            "load",
            f"{items:,} items x {days} days, {days_per_second:g} days/s -> {items * days_per_second:,.0f} "
            "item-buckets closing per s",
        ),
        (
            "members",
            f"{members} process{'es' if members > 1 else ''}, {threads} torch thread(s) and "
            f"{workers or default_workers(pick_device('auto'), threads)} model worker(s) each, "
            f"{PARTITIONS} partitions",
        ),
        ("events", f"{n_read:,} of {n_events:,} in {elapsed:.1f} s ({n_read / elapsed:,.0f}/s)"),
        ("forecasts published", f"{n_forecasts:,} ({n_forecasts / elapsed:,.0f}/s)"),
        ("micro-batches", f"{lat.size:,} (max {max_batch}, max delay {max_delay_ms:g} ms)"),
        ("close -> ack latency p50", f"{np.percentile(lat, 50):.0f} ms"),
        ("close -> ack latency p99 (target < 250 ms)", f"{np.percentile(lat, 99):.0f} ms"),
        (
            "close -> ack latency p90 / max; slowest five",
            f"{np.percentile(lat, 90):.0f} / {lat.max():.0f} ms; "
            + ", ".join(f"{x:.0f}" for x in np.sort(lat)[-5:][::-1]),
        ),
        (
            "steady state (from the second closed day on): p50 / p90 / p99",
            f"{np.percentile(steady, 50):.0f} / {np.percentile(steady, 90):.0f} / "
            f"{np.percentile(steady, 99):.0f} ms over {steady.size} requests"
            if steady.size
            else "no request after the first day",
        ),
        (
            "first closed day after the start: slowest; its turns' longest wait for acks",
            f"{lat[~is_steady].max():.0f} ms; {flush[~is_steady].max():.0f} ms"
            if (~is_steady).any() and flush.size == lat.size
            else "not measured",
        ),
        (
            "where it went, p50 / p99: queued before its turn; the turn forecasting and sending; "
            "waiting for acks",
            f"{np.percentile(queued, 50):.0f} / {np.percentile(queued, 99):.0f}; "
            f"{np.percentile(forecast, 50):.0f} / {np.percentile(forecast, 99):.0f}; "
            f"{np.percentile(flush, 50):.0f} / {np.percentile(flush, 99):.0f} ms",
        ),
        (
            "checkpoints during the load (each: every changed partition's snapshot written and acked); "
            "the loop held by each",
            f"{n_checkpoints:.0f}, {checkpoint_s / n_checkpoints * 1000:,.0f} ms each on average; "
            f"{checkpoint_held_s / n_checkpoints * 1000:,.0f} ms"
            if n_checkpoints
            else ("none (interval not reached)" if changelog else "none (--changelog off)"),
        ),
        (
            "garbage collector during the load, all members",
            f"{len(passes):,} passes, {sum(sec for _, sec in passes) * 1000:,.0f} ms in all; "
            f"{len(full)} full{longest}",
        ),
        (
            f"bare producer: {items:,} forecast messages sent and acked",
            f"{floor_ms:.0f} ms (p99 / this: {np.percentile(lat, 99) / floor_ms:.1f})",
        ),
    ]


def _forecast_message(model: Path) -> bytes:
    """One forecast message as the service writes them (the bare producer sends copies of it)."""
    meta = load_model(model)[1]
    fmt = ForecastFormat("D", str(meta["version"]), tuple(meta["quantiles"]), int(meta["horizons"]))
    values = np.linspace(0.0, 9.0, fmt.horizons * len(fmt.quantiles), dtype=np.float32)
    values = values.reshape(fmt.horizons, len(fmt.quantiles)) + np.random.default_rng(0).random(1, np.float32)
    return encode_forecasts(fmt, ["item-0000"], 0, values[None], int(time.time() * 1000))[0]


def _bare_producer_ms(bootstrap: str, topic: str, items: int, message: bytes, rounds: int = 3) -> float:
    """The client's own floor for one bucket's forecasts: ``items`` keyed messages of the service's
    size through a bare idempotent producer, sent and acknowledged (best of ``rounds``)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_SETTINGS)
    try:
        producer.partitions_for(topic)
        keys = [f"item-{i}".encode() for i in range(items)]
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for key in keys:
                producer.send(topic, value=message, key=key)
            producer.flush()
            best = min(best, time.perf_counter() - t0)
        return best * 1000
    finally:
        producer.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--items",
        type=positive_int_list,
        default=[10_000],
        help="items, or a comma-separated list of loads for a latency curve (default: 10000)",
    )
    p.add_argument("--days", type=positive_int, default=30, help="days replayed (default: 30)")
    p.add_argument(
        "--days-per-second", type=float, default=1.0, help="replay speed: days closed per second (default: 1)"
    )
    p.add_argument("--max-batch", type=positive_int, default=1024, help="rows per model call (default: 1024)")
    p.add_argument(
        "--max-delay-ms", type=float, default=20.0, help="the micro-batcher's longest wait (default: 20)"
    )
    p.add_argument(
        "--members",
        type=positive_int_list,
        default=[1],
        help=f"group members (processes), or a comma-separated list; at most {PARTITIONS} (default: 1)",
    )
    p.add_argument(
        "--model-workers",
        type=int,
        default=0,
        help="model threads per member, as serve's --model-workers (default 0: the service's default)",
    )
    p.add_argument(
        "--changelog",
        choices=("on", "off"),
        default="on",
        help="snapshot each partition's state to the changelog topic every checkpoint, as the service "
        "does by default (default: on)",
    )
    a = p.parse_args(argv)
    if max(a.members) > PARTITIONS:
        p.error(f"--members: at most {PARTITIONS}, one partition each")
    with bootstrap_server() as bootstrap:
        for items in a.items:
            for members in a.members:
                rows = run(
                    bootstrap,
                    items,
                    a.days,
                    a.days_per_second,
                    a.max_batch,
                    a.max_delay_ms,
                    members,
                    a.model_workers,
                    a.changelog == "on",
                )
                print(table(rows, f"End-to-end latency, {items:,} items, {members} member(s) ({machine()})"))
                print()


if __name__ == "__main__":
    main()
