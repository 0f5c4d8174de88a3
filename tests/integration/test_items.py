"""Item attributes from the compacted items topic reach the model's static inputs (real broker)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry
from test_service import _config, _consume_all, _events, _produce, _run_until

from model.features import static_ids
from model.history import History, dates_to_buckets
from stream.errors import MqcastError
from stream.inference import Predictor
from stream.replay import load_events, send_attributes
from stream.service import ForecastService

STORES = {"sku-0": "1", "sku-1": "2", "sku-2": "1", "sku-3": "7"}


@pytest.fixture(scope="module")
def store_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny daily model whose one static column is the store."""
    from stream.training import train_artifact

    rng = np.random.default_rng(0)
    qty = rng.poisson(3.0, (12, 60)).astype(np.float32)
    history = History(
        item_ids=np.array([f"sku-{i}" for i in range(12)]),
        freq="D",
        first_bucket=int(dates_to_buckets(np.array(["2017-07-14"]), "D")[0]),
        qty=qty,
        observed=np.ones(qty.shape, dtype=bool),
        price=np.full(qty.shape, 2.0, dtype=np.float32),
        static={"store": np.array([str(i % 3) for i in range(12)])},
    )
    path = tmp_path_factory.mktemp("model") / "stores.pt"
    train_artifact(history, path, epochs=2, feedback_stages=0, threads=1, progress=False)
    return path


@pytest.fixture
def topics(topics: dict[str, str], topic_factory) -> dict[str, str]:
    """The service's topics (conftest) and a compacted items topic."""
    return {**topics, "items": topic_factory(partitions=2, configs={"cleanup.policy": "compact"})}


def _service(bootstrap: str, topics: dict[str, str], model: Path, group: str, items: str | None = None):
    cfg = _config(bootstrap, topics, model, group)
    cfg = dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka, items_topic=items or topics["items"]))
    return ForecastService(cfg, Predictor.load(model, "cpu"), CollectorRegistry())


def _ids(service: ForecastService, items: list[str]) -> np.ndarray:
    return service.statics.ids_for(np.array(items, dtype=object))


def test_the_service_serves_each_items_attributes_from_the_items_topic(bootstrap, topics, store_model):
    vocab = Predictor.load(store_model, "cpu").meta["model_args"]["static_vocab"]
    items = list(STORES)
    _produce(bootstrap, topics["items"], [{"store": s} for s in STORES.values()], keys=items)
    _produce(bootstrap, topics["items"], [b"{oops"], keys=["sku-9"])  # refused, with its reason
    _produce(bootstrap, topics["sales"], _events(items, days=4))
    service = _service(bootstrap, topics, store_model, "g-items")
    try:
        # Read to the end before the first forecast.
        expected = static_ids(np.array([[s] for s in STORES.values()]), vocab)
        np.testing.assert_array_equal(_ids(service, items), expected)
        _run_until(service, lambda: service.stats.forecasts >= 3 * len(items))
        # A change and a tombstone while serving.
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        producer.send(topics["items"], key=b"sku-3", value=b'{"store": 1}')
        producer.send(topics["items"], key=b"sku-0", value=None)
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 30
        while (_ids(service, ["sku-3"]) != _ids(service, ["sku-2"])).any() or _ids(service, ["sku-0"]).any():
            assert time.monotonic() < deadline, "the items' changes never arrived"
            service.poll_once()
        service.commit()
    finally:
        service.close()
    assert service.items is not None and service.items.stats.rejected == 1
    (dead,) = _consume_all(bootstrap, topics["dlq"], 1)
    headers = dict(dead.headers)
    assert "not JSON" in headers["mqcast.reason"].decode()
    assert headers["mqcast.source.topic"].decode() == topics["items"] and dead.value == b"{oops"


def test_a_model_with_static_columns_refuses_a_missing_items_topic(bootstrap, topics, store_model):
    with pytest.raises(MqcastError, match=r"items topic .* does not exist"):
        _service(bootstrap, topics, store_model, "g-no-items", items="no-such-items-topic")


def test_replay_sends_a_history_files_static_columns_to_the_items_topic(bootstrap, topics, tmp_path):
    path = tmp_path / "h.csv"
    path.write_text(
        "item_id,date,qty,store,dept\na,2024-01-01,3,1,x\na,2024-01-02,1,1,x\nb,2024-01-01,2,2,y\n"
    )
    events = load_events(path)
    assert events.attributes == {"a": {"store": "1", "dept": "x"}, "b": {"store": "2", "dept": "y"}}
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        assert send_attributes(producer, topics["items"], events.attributes) == 2
    finally:
        producer.close()
    consumer = KafkaConsumer(topics["items"], bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    got: dict[str, bytes] = {}
    deadline = time.monotonic() + 30
    try:
        while len(got) < 2 and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                got.update({r.key.decode(): r.value for r in recs})
    finally:
        consumer.close()
    assert got == {"a": b'{"store":"1","dept":"x"}', "b": b'{"store":"2","dept":"y"}'}
