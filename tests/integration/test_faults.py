"""Kill it, scale it, restart the broker: state and forecasts must equal a run without faults.

Each test feeds the same events to a reference service (no faults, in this process) and to
``mqcast serve`` processes that are killed, joined or restarted mid-stream. At the end the state
every run left in its changelog is compared array by array, and the forecasts, de-duplicated by
(item, origin) since output is at-least-once, are compared value by value.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from state.config import StateConfig
from state.snapshot import restore
from stream.batcher import BatcherConfig
from stream.changelog import Changelog, changelog_topic
from stream.config import DurabilityConfig, KafkaConfig, MetricsConfig, ModelServeConfig, ServiceConfig
from stream.inference import Predictor
from stream.service import ForecastService

DAY = 86_400_000
T0 = 1_500_000_000_000 - 1_500_000_000_000 % DAY
PARTITIONS = 3
ITEMS = [f"p{i}" for i in range(30)]
DAYS = 24


def _day_events(day: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(day)
    out = []
    for k, item in enumerate(ITEMS):
        if rng.random() < 0.7:
            ts = T0 + day * DAY + int(rng.integers(1, 23)) * 3_600_000 + k
            out.append(
                (
                    item,
                    orjson.dumps({"item_id": item, "ts": ts, "qty": int(rng.integers(0, 9)), "price": 3.0}),
                )
            )
    return out


def _produce_days(bootstrap: str, topic: str, days: range, pause_s: float = 0.0) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    n = 0
    for d in days:
        for item, value in _day_events(d):
            producer.send(topic, key=item.encode(), value=value)
            n += 1
        producer.flush()
        time.sleep(pause_s)
    producer.close()
    return n


def _committed_total(bootstrap: str, group: str, topic: str) -> int:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(c.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS))
    finally:
        c.close()


def _wait_committed(bootstrap: str, group: str, topic: str, total: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _committed_total(bootstrap, group, topic) < total:
        assert time.monotonic() < deadline, f"group {group} did not commit {total} offsets in time"
        time.sleep(0.5)


def _forecasts(
    bootstrap: str, topic: str, read_committed: bool = False, duplicates: list | None = None
) -> dict[tuple[str, int], np.ndarray]:
    """Every forecast on the topic, de-duplicated by (item, origin); duplicates must agree."""
    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    out: dict[tuple[str, int], np.ndarray] = {}
    idle = 0
    try:
        while idle < 4:
            batch = c.poll(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for recs in batch.values():
                for r in recs:
                    m = orjson.loads(r.value)
                    key = (m["item_id"], m["origin_ms"])
                    values = np.array(m["values"])
                    if key in out:
                        if duplicates is not None:
                            duplicates.append(key)
                        np.testing.assert_allclose(values, out[key], rtol=1e-4, atol=1e-4)
                    out[key] = values
    finally:
        c.close()
    return out


def _states(bootstrap: str, group: str, sales: str, cfg: StateConfig) -> dict:
    # Committed snapshots only: an exactly-once instance killed mid-transaction leaves aborted ones.
    log = Changelog(
        KafkaProducer(bootstrap_servers=bootstrap),
        bootstrap,
        changelog_topic(group, sales),
        read_committed=True,
    )
    out = {}
    for p in range(PARTITIONS):
        found = log.read_latest(p)
        assert found is not None, f"no snapshot for partition {p}"
        out[p] = restore(found[0], cfg)
    log.producer.close()
    return out


def _assert_same_state(a: dict, b: dict) -> None:
    for p in a:
        (sa, oa), (sb, ob) = a[p], b[p]
        assert oa == ob, f"partition {p}: snapshot offsets {oa} != {ob}"
        assert list(sa.ids[: sa.n_items]) == list(sb.ids[: sb.n_items])
        assert sa.next_close == sb.next_close and sa.max_event_ms == sb.max_event_ms
        n = sa.n_items
        for name in ("qty", "price", "first_bucket", "last_sale"):
            np.testing.assert_array_equal(getattr(sa, name)[:n], getattr(sb, name)[:n], err_msg=name)
        np.testing.assert_allclose(sa.ledger.feedback[:n], sb.ledger.feedback[:n], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sa.ledger.forecasts[:n], sb.ledger.forecasts[:n], rtol=1e-4, atol=1e-4)
        assert sorted(sa.open) == sorted(sb.open)


class Topics:
    def __init__(self, topic_factory) -> None:
        self.sales = topic_factory(partitions=PARTITIONS, prefix="sales")
        self.ref_out = topic_factory(partitions=PARTITIONS, prefix="ref-fc")
        self.out = topic_factory(partitions=PARTITIONS, prefix="fc")
        self.dlq = topic_factory(prefix="dlq")


def _reference(bootstrap: str, topics: Topics, model: Path, total: int) -> tuple[dict, dict, StateConfig]:
    group = f"ref-{uuid.uuid4().hex[:6]}"
    cfg = ServiceConfig(
        kafka=KafkaConfig(
            bootstrap=bootstrap,
            sales_topic=topics.sales,
            forecast_topic=topics.ref_out,
            dead_letter_topic=topics.dlq,
            group_id=group,
            commit_interval_ms=300,
        ),
        model=ModelServeConfig(path=model, device="cpu"),
        batcher=BatcherConfig(max_batch=256, max_delay_ms=10),
        metrics=MetricsConfig(port=0),
        durability=DurabilityConfig(checkpoint_interval_ms=1000),
    )
    service = ForecastService(cfg, Predictor.load(model, "cpu"), CollectorRegistry())
    deadline = time.monotonic() + 120
    try:
        while service.stats.events < total:
            assert time.monotonic() < deadline
            service.poll_once()
    finally:
        service.close()
    return (
        _states(bootstrap, group, topics.sales, service.state_cfg),
        _forecasts(bootstrap, topics.ref_out),
        service.state_cfg,
    )


def _serve(
    bootstrap: str, topics: Topics, model: Path, group: str, instance: str, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "stream.cli",
        "serve",
        "--model",
        str(model),
        "--bootstrap",
        bootstrap,
        "--sales-topic",
        topics.sales,
        "--forecast-topic",
        topics.out,
        "--dead-letter-topic",
        topics.dlq,
        "--group-id",
        group,
        "--client-id",
        instance,
        "--metrics-port",
        "0",
        "--device",
        "cpu",
        "--commit-interval",
        "300ms",
        "--checkpoint-interval",
        "1s",
        "--max-batch",
        "256",
        "--max-delay",
        "10ms",
        "--session-timeout",
        "6s",
        *extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = tempfile.NamedTemporaryFile(prefix=f"mqcast-{instance}-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    log.close()
    return proc


def _log(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def _wait_log(proc: subprocess.Popen, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in _log(proc):
        assert proc.poll() is None, f"instance exited: {_log(proc)[-2000:]}"
        assert time.monotonic() < deadline, f"{text!r} never logged: {_log(proc)[-2000:]}"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    """Stop an instance; returns what it logged."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        pytest.fail("mqcast serve did not stop within 60 s of SIGTERM")
    text = _log(proc)
    os.unlink(proc.log_path)  # type: ignore[attr-defined]
    return text


def _wait_some_progress(bootstrap: str, group: str, topic: str, at_least: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while _committed_total(bootstrap, group, topic) < at_least:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.2)


def _wait_snapshot(bootstrap: str, group: str, sales: str, timeout_s: float = 60) -> None:
    log = Changelog(None, bootstrap, changelog_topic(group, sales))  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout_s
    while not any(log.read_latest(p) for p in range(PARTITIONS)):
        assert time.monotonic() < deadline, "no state snapshot was written"
        time.sleep(0.3)


def test_kill_9_mid_stream_then_restart_equals_a_run_without_faults(bootstrap, topic_factory, tiny_model):
    topics = Topics(topic_factory)
    group = f"kill-{uuid.uuid4().hex[:6]}"
    n = _produce_days(bootstrap, topics.sales, range(0, DAYS // 2))
    proc = _serve(bootstrap, topics, tiny_model, group, "a")
    try:
        _wait_some_progress(bootstrap, group, topics.sales, n // 3)
        _wait_snapshot(bootstrap, group, topics.sales)
        n += _produce_days(bootstrap, topics.sales, range(DAYS // 2, DAYS // 2 + 4))
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream, no goodbye
        proc.wait(timeout=10)
        n += _produce_days(bootstrap, topics.sales, range(DAYS // 2 + 4, DAYS))
        proc = _serve(bootstrap, topics, tiny_model, group, "a")
        _wait_committed(bootstrap, group, topics.sales, n)
    finally:
        log = _stop(proc)
    assert ": restored, resuming at" in log, log[-2000:]
    ref_states, ref_forecasts, cfg = _reference(bootstrap, topics, tiny_model, n)
    _assert_same_state(ref_states, _states(bootstrap, group, topics.sales, cfg))
    got = _forecasts(bootstrap, topics.out)
    assert set(got) == set(ref_forecasts)
    for key, values in ref_forecasts.items():
        np.testing.assert_allclose(got[key], values, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("assignor", ["range", "cooperative-sticky"])
def test_scaling_one_two_one_instances_loses_and_doubles_nothing(
    bootstrap, topic_factory, tiny_model, assignor
):
    topics = Topics(topic_factory)
    group = f"scale-{uuid.uuid4().hex[:6]}"
    n = _produce_days(bootstrap, topics.sales, range(0, 8))
    a = _serve(bootstrap, topics, tiny_model, group, "a", ("--assignor", assignor))
    b = None
    try:
        _wait_some_progress(bootstrap, group, topics.sales, n // 2)
        b = _serve(bootstrap, topics, tiny_model, group, "b", ("--assignor", assignor))  # 1 -> 2
        _wait_log(b, ": restored, resuming at")
        n += _produce_days(bootstrap, topics.sales, range(8, 16), pause_s=0.3)
        log_b = _stop(b)  # 2 -> 1: b hands its partitions back
        b = None
        assert ": restored, resuming at" in log_b, log_b[-3000:]
        n += _produce_days(bootstrap, topics.sales, range(16, DAYS), pause_s=0.05)
        _wait_committed(bootstrap, group, topics.sales, n)
    finally:
        if b is not None:
            _stop(b)
        _stop(a)
    ref_states, ref_forecasts, cfg = _reference(bootstrap, topics, tiny_model, n)
    _assert_same_state(ref_states, _states(bootstrap, group, topics.sales, cfg))
    got = _forecasts(bootstrap, topics.out)
    assert set(got) == set(ref_forecasts)


def test_broker_restart_mid_stream_loses_nothing(local_broker, topic_factory, tiny_model):
    bootstrap = local_broker.bootstrap
    topics = Topics(topic_factory)
    group = f"brk-{uuid.uuid4().hex[:6]}"
    n = _produce_days(bootstrap, topics.sales, range(0, DAYS // 2))
    proc = _serve(bootstrap, topics, tiny_model, group, "a")
    try:
        _wait_some_progress(bootstrap, group, topics.sales, n // 3)
        local_broker.restart(down_s=2.0)
        n += _produce_days(bootstrap, topics.sales, range(DAYS // 2, DAYS))
        _wait_committed(bootstrap, group, topics.sales, n, timeout_s=180)
    finally:
        _stop(proc)
    ref_states, ref_forecasts, cfg = _reference(bootstrap, topics, tiny_model, n)
    _assert_same_state(ref_states, _states(bootstrap, group, topics.sales, cfg))
    got = _forecasts(bootstrap, topics.out)
    assert set(got) == set(ref_forecasts)


def test_exactly_once_mode_publishes_each_forecast_once_across_a_kill_9(bootstrap, topic_factory, tiny_model):
    topics = Topics(topic_factory)
    group = f"eos-{uuid.uuid4().hex[:6]}"
    eos = ("--exactly-once", "on")
    n = _produce_days(bootstrap, topics.sales, range(0, DAYS // 2))
    proc = _serve(bootstrap, topics, tiny_model, group, "a", eos)
    try:
        _wait_some_progress(bootstrap, group, topics.sales, n // 3)
        n += _produce_days(bootstrap, topics.sales, range(DAYS // 2, DAYS // 2 + 4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        n += _produce_days(bootstrap, topics.sales, range(DAYS // 2 + 4, DAYS))
        proc = _serve(bootstrap, topics, tiny_model, group, "a", eos)
        _wait_committed(bootstrap, group, topics.sales, n)
    finally:
        _stop(proc)
    ref_states, ref_forecasts, cfg = _reference(bootstrap, topics, tiny_model, n)
    _assert_same_state(ref_states, _states(bootstrap, group, topics.sales, cfg))
    duplicates: list = []
    got = _forecasts(bootstrap, topics.out, read_committed=True, duplicates=duplicates)
    assert duplicates == []
    assert set(got) == set(ref_forecasts)
