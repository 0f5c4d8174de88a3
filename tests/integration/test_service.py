"""The service end to end against the real broker: events in, forecasts and dead letters out."""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.partitioner.default import murmur2 as client_murmur2
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from state.partition import ClosedBucket
from stream.batcher import BatcherConfig
from stream.config import DurabilityConfig, KafkaConfig, MetricsConfig, ModelServeConfig, ServiceConfig
from stream.errors import ModelMismatchError
from stream.inference import Predictor
from stream.service import ForecastService, ServiceObserver

DAY = 86_400_000
T0 = 1_500_000_000_000 - 1_500_000_000_000 % DAY  # a midnight


def _events(items: list[str], days: int, start_day: int = 0) -> list[dict]:
    out = []
    for d in range(start_day, start_day + days):
        for k, item in enumerate(items):
            out.append(
                {
                    "item_id": item,
                    "ts": T0 + d * DAY + 3_600_000 * (1 + k),
                    "qty": float(1 + (d + k) % 4),
                    "price": 2.0,
                }
            )
    return out


def _produce(bootstrap: str, topic: str, values: list[bytes | dict], keys: list[str] | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i, v in enumerate(values):
        raw = orjson.dumps(v) if isinstance(v, dict) else v
        key = (keys[i] if keys else (v.get("item_id") if isinstance(v, dict) else "bad")) or "none"
        producer.send(topic, value=raw, key=key.encode())
    producer.flush()
    producer.close()


def _consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=f"check-{uuid.uuid4().hex[:8]}",
    )
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
    finally:
        consumer.close()
    return out


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        consumer.close()


def _config(bootstrap: str, topics: dict[str, str], model: Path, group: str) -> ServiceConfig:
    return ServiceConfig(
        kafka=KafkaConfig(
            bootstrap=bootstrap,
            sales_topic=topics["sales"],
            forecast_topic=topics["forecasts"],
            dead_letter_topic=topics["dlq"],
            group_id=group,
            commit_interval_ms=200,
        ),
        model=ModelServeConfig(path=model, device="cpu", bucket="D"),
        batcher=BatcherConfig(max_batch=64, max_delay_ms=20),
        metrics=MetricsConfig(port=0),
        allowed_lateness_ms=600_000,
    )


def _run_until(service: ForecastService, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out; stats {service.stats}"
        service.poll_once()


class Capture(ServiceObserver):
    def __init__(self) -> None:
        self.feedback: dict[str, list[tuple[int, np.ndarray]]] = {}

    def on_forecasts(self, partition: int, closed: ClosedBucket, values: np.ndarray) -> None:
        for i, item in enumerate(closed.item_ids):
            self.feedback.setdefault(item, []).append((closed.bucket, closed.feedback[i].copy()))


class Phases(ServiceObserver):
    """Each published request's latency beside where its turn says the time went."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.turns: list[tuple[float, float, float]] = []  # (queued, forecast, flush) per latency
        self.calls = 0

    def on_published(self, latencies_s: list[float], rows: int) -> None:
        self.latencies.extend(latencies_s)

    def on_turn(self, queued_s: list[float], forecast_s: float, flush_s: float) -> None:
        self.turns.extend((q, forecast_s, flush_s) for q in queued_s)
        self.calls += 1


def test_events_in_forecasts_out_with_keys_and_shapes(bootstrap, topics, tiny_model):
    items = [f"sku-{i}" for i in range(6)]
    _produce(bootstrap, topics["sales"], _events(items, days=8))
    predictor = Predictor.load(tiny_model, "cpu")
    phases = Phases()
    registry = CollectorRegistry()
    service = ForecastService(
        _config(bootstrap, topics, tiny_model, "g-shapes"), predictor, registry, observer=phases
    )
    try:
        # 8 days of events close 7 days in every partition that holds items.
        _run_until(service, lambda: service.stats.forecasts >= 7 * len(items))
        service.commit()
    finally:
        service.close()
    records = _consume_all(bootstrap, topics["forecasts"], 7 * len(items))
    assert len(records) == 7 * len(items)
    meta = predictor.meta
    for rec in records:
        msg = orjson.loads(rec.value)
        assert rec.key.decode() == msg["item_id"] and msg["item_id"] in items
        # Where Kafka's default partitioner (and the Java client) would put the key.
        assert rec.partition == (client_murmur2(rec.key) & 0x7FFFFFFF) % 2
        assert msg["quantiles"] == meta["quantiles"]
        assert msg["horizons"] == list(range(1, meta["horizons"] + 1))
        values = np.array(msg["values"])
        assert values.shape == (meta["horizons"], len(meta["quantiles"]))
        assert np.all(np.diff(values, axis=1) >= 0) and np.all(values >= 0)
        assert msg["model_version"] == predictor.version and msg["bucket"] == "D"
        assert (msg["origin_ms"] - T0) % DAY == 0
    origins = {(orjson.loads(r.value)["item_id"], orjson.loads(r.value)["origin_ms"]) for r in records}
    assert len(origins) == len(records)  # one forecast per item and origin
    # Every latency splits into its wait for a turn, then at most the turn's forecasting and its
    # wait for acknowledgements (the last ack may come before the flush returns, not after).
    assert phases.latencies and len(phases.turns) == len(phases.latencies)
    for latency, (queued, forecast, flush) in zip(phases.latencies, phases.turns, strict=True):
        assert queued >= 0 and forecast > 0 and flush >= 0
        assert queued <= latency <= queued + forecast + flush + 1e-9
    # The same parts go to Prometheus: one wait per published bucket, one ack wait per turn.
    assert registry.get_sample_value("mqcast_turn_wait_seconds_count") == len(phases.latencies)
    waits = registry.get_sample_value("mqcast_turn_wait_seconds_sum")
    assert waits == pytest.approx(sum(q for q, _, _ in phases.turns))
    assert registry.get_sample_value("mqcast_ack_wait_seconds_count") == phases.calls >= 1
    # Each checkpoint that wrote snapshots (one or more partitions'; at least the one on close) is timed.
    assert 1 <= registry.get_sample_value("mqcast_checkpoint_seconds_count") <= service.stats.checkpoints


def test_bad_events_go_to_dead_letters_and_the_service_keeps_going(bootstrap, topics, tiny_model):
    items = ["a", "b"]
    good = _events(items, days=4)
    bad: list[bytes | dict] = [
        b"{oops",
        {"item_id": "a", "ts": T0, "qty": -3},
        {"item_id": "a", "qty": 1},
        {"item_id": "a", "ts": "not a time", "qty": 1},
    ]
    late = {"item_id": "a", "ts": T0 + 0 * DAY + 60_000, "qty": 5.0}  # day 0 closed by then
    values: list[bytes | dict] = [*good[:4], *bad, *good[4:], late, *_events(items, days=2, start_day=4)]
    _produce(bootstrap, topics["sales"], values, keys=["a"] * len(values))  # one partition: order is known
    predictor = Predictor.load(tiny_model, "cpu")
    service = ForecastService(_config(bootstrap, topics, tiny_model, "g-dlq"), predictor, CollectorRegistry())
    try:
        _run_until(service, lambda: service.stats.events >= len(values) and service.stats.forecasts >= 5 * 2)
        service.commit()
    finally:
        service.close()
    dead = _consume_all(bootstrap, topics["dlq"], 5)
    assert len(dead) == 5
    reasons = [dict(r.headers)["mqcast.reason"].decode() for r in dead]
    assert "malformed JSON" in reasons[0]
    assert "qty must be >= 0" in reasons[1]
    assert "ts must be" in reasons[2]
    assert "RFC 3339" in reasons[3]
    assert "later than the allowed lateness" in reasons[4]
    headers = dict(dead[0].headers)
    assert headers["mqcast.source.topic"].decode() == topics["sales"]
    assert int(headers["mqcast.source.offset"]) == 4
    assert dead[0].value == b"{oops"  # the original bytes, untouched
    assert service.stats.invalid == 4 and service.stats.late == 1


def test_restarted_service_resumes_from_committed_offsets(bootstrap, topics, tiny_model):
    items = [f"r{i}" for i in range(4)]
    first, second = _events(items, days=5), _events(items, days=3, start_day=5)
    _produce(bootstrap, topics["sales"], first)
    predictor = Predictor.load(tiny_model, "cpu")
    cfg = _config(bootstrap, topics, tiny_model, "g-restart")
    service = ForecastService(cfg, predictor, CollectorRegistry())
    try:
        _run_until(service, lambda: service.stats.events >= len(first))
        service.commit()
    finally:
        service.close()
    assert _committed(bootstrap, "g-restart", topics["sales"], 2) == len(first)

    _produce(bootstrap, topics["sales"], second)
    again = ForecastService(cfg, predictor, CollectorRegistry())
    try:
        _run_until(again, lambda: again.stats.events >= len(second))
        # Nothing of the first run is read again.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            again.poll_once()
        assert again.stats.events == len(second)
    finally:
        again.close()


def test_a_periodic_checkpoint_is_written_beside_the_loop_and_a_new_owner_restores_it(
    bootstrap, topics, tiny_model
):
    items = [f"c{i}" for i in range(6)]
    events = _events(items, days=6)
    _produce(bootstrap, topics["sales"], events)
    predictor = Predictor.load(tiny_model, "cpu")
    base = _config(bootstrap, topics, tiny_model, "g-beside")
    # No commit until the test's own (so its checkpoint is the first), and a checkpoint with each.
    cfg = dataclasses.replace(
        base,
        kafka=dataclasses.replace(base.kafka, commit_interval_ms=600_000),
        durability=DurabilityConfig(checkpoint_interval_ms=0),
    )
    first = ForecastService(cfg, predictor, CollectorRegistry())
    try:
        _run_until(first, lambda: first.stats.events >= len(events))
        first.commit()
        # The commit has returned while its snapshots may still be on their way: the writer holds
        # the checkpoint until the loop collects it.
        assert first.snapshots is not None and first.snapshots.busy
        done = first.snapshots.wait()
        assert done is not None and done.partitions
        kept = {p: first.states[p] for p in done.partitions}
    finally:
        # A crash: no last checkpoint, no offsets committed on the way out.
        first.consumer.close(autocommit=False)
        first.changelog.producer.close()  # type: ignore[union-attr]
        first.publisher.producer.close()
    second = ForecastService(cfg, predictor, CollectorRegistry())
    try:
        _run_until(
            second, lambda: set(kept) <= set(second.states) and second.stats.restored_partitions >= len(kept)
        )
        for p, state in kept.items():
            n = state.n_items
            assert second.states[p].n_items == n > 0
            assert list(second.states[p].ids[:n]) == list(state.ids[:n])
            np.testing.assert_array_equal(second.states[p].qty[:n], state.qty[:n])
            np.testing.assert_array_equal(second.states[p].ledger.forecasts[:n], state.ledger.forecasts[:n])
    finally:
        second.close()


@pytest.mark.parametrize("window", [0, 3])
def test_feedback_features_change_after_realised_buckets(bootstrap, topics, request, window):
    model = request.getfixturevalue("tiny_window_model" if window else "tiny_model")
    items = [f"f{window}-1", f"f{window}-2", f"f{window}-3"]
    _produce(bootstrap, topics["sales"], _events(items, days=10))
    capture = Capture()
    service = ForecastService(
        _config(bootstrap, topics, model, f"g-feedback-{window}"),
        Predictor.load(model, "cpu"),
        CollectorRegistry(),
        observer=capture,
    )
    try:
        _run_until(service, lambda: service.stats.forecasts >= 9 * len(items))
    finally:
        service.close()
    for item in items:
        seq = sorted(capture.feedback[item], key=lambda t: t[0])
        _, first_fb = seq[0]
        assert np.all(first_fb == 0), "nothing is realised before the first forecast"
        weights = [fb[0] for _, fb in seq]
        assert all(b > a for a, b in itertools.pairwise(weights)), "each closed bucket adds evidence"
        assert not np.allclose(seq[-1][1][1:6], seq[-2][1][1:6]), "error averages move with new realisations"
        assert len(seq[-1][1]) == 6 * (1 + window)
        # The window fills one slot per realised bucket (the k-th forecast follows k of them).
        for k, (_, fb) in enumerate(seq):
            filled = min(k, window)
            np.testing.assert_array_equal(fb[6::6], [1.0] * filled + [0.0] * (window - filled))
    assert service.metrics.rolling_wql() is not None


def test_service_refuses_a_model_trained_on_other_buckets(bootstrap, topics, tiny_model):
    cfg = _config(bootstrap, topics, tiny_model, "g-refuse")
    cfg = ServiceConfig(
        cfg.kafka, ModelServeConfig(path=tiny_model, device="cpu", bucket="W"), cfg.batcher, cfg.metrics
    )
    with pytest.raises(ModelMismatchError, match="trained on 'D' buckets"):
        ForecastService(cfg, Predictor.load(tiny_model, "cpu"), CollectorRegistry())


def test_committed_offsets_cover_only_acknowledged_output(bootstrap, topics, tiny_model):
    items = ["c1", "c2"]
    events = _events(items, days=6)
    _produce(bootstrap, topics["sales"], events)
    service = ForecastService(
        _config(bootstrap, topics, tiny_model, "g-ack"),
        Predictor.load(tiny_model, "cpu"),
        CollectorRegistry(),
    )
    try:
        _run_until(service, lambda: service.stats.events >= len(events))
        service.commit()
        assert service.publisher.in_flight == 0
        forecasts = service.stats.forecasts
    finally:
        service.close()
    records = _consume_all(bootstrap, topics["forecasts"], forecasts)
    assert len(records) == forecasts > 0
    assert _committed(bootstrap, "g-ack", topics["sales"], 2) == len(events)


def test_service_warns_once_of_a_forecast_topic_with_the_brokers_large_index(
    bootstrap, topics, tiny_model, caplog
):
    # The fixture's forecast topic has the broker's default index, as one made before mqcast
    # asked for a small one (stream/topics.py).
    with caplog.at_level("WARNING", logger="mqcast.service"):
        service = ForecastService(
            _config(bootstrap, topics, tiny_model, "g-index"),
            Predictor.load(tiny_model, "cpu"),
            CollectorRegistry(),
        )
    service.close()
    warned = [r.getMessage() for r in caplog.records if "segment.index.bytes" in r.getMessage()]
    assert len(warned) == 1
    assert f"--entity-name {topics['forecasts']} --add-config segment.index.bytes=1048576" in warned[0]
