"""Operating the service against the real broker: hot model reload and backpressure."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import torch
from prometheus_client import CollectorRegistry
from test_service import DAY, T0, _config, _consume_all, _events, _produce, _run_until

from model.export import export_model, load_model
from model.network import MQCNN, ModelArgs
from stream.batcher import BatcherConfig
from stream.config import FlowConfig, ReloadConfig, ServiceConfig
from stream.inference import Predictor
from stream.service import ForecastService


def _successor(model: Path, out: Path, **changes) -> str:
    """An artefact like ``model`` with other weights (and ``changes`` to its arguments); its version."""
    _, meta = load_model(model)
    args = ModelArgs(**{**meta["model_args"], **changes})
    torch.manual_seed(123)
    keep = {k: meta[k] for k in ("freq", "features", "static_columns")}
    return export_model(MQCNN(args).eval(), args, out, keep)["version"]


def _publish(src: Path, dest: Path, bump_s: int) -> None:
    """Put a new artefact in place the safe way (write aside, rename), with a distinct mtime."""
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dest)
    st = dest.stat()
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns + bump_s * 1_000_000_000))


def _reload_samples(service: ForecastService, result: str) -> float:
    value = service.registry.get_sample_value("mqcast_model_reloads_total", {"result": result})
    return value or 0.0


def test_new_model_is_swapped_in_between_batches_and_a_bad_one_is_refused(
    bootstrap, topics, tiny_model, tmp_path
):
    served = tmp_path / "serving.pt"
    served.write_bytes(tiny_model.read_bytes())
    new_version = _successor(tiny_model, tmp_path / "next.pt")
    _successor(tiny_model, tmp_path / "wrong.pt", horizons=3)
    base = _config(bootstrap, topics, served, "g-reload")
    cfg = ServiceConfig(
        base.kafka, base.model, base.batcher, base.metrics, base.durability, ReloadConfig(True, 0.05)
    )
    items = [f"m{i}" for i in range(5)]
    first, second = _events(items, days=4), _events(items, days=4, start_day=4)
    predictor = Predictor.load(served, "cpu")
    service = ForecastService(cfg, predictor, CollectorRegistry())
    try:
        _produce(bootstrap, topics["sales"], first)
        _run_until(service, lambda: service.stats.events >= len(first))
        service.commit()  # forecasts everything queued, with the first model
        before = service.stats.forecasts

        _publish(tmp_path / "wrong.pt", served, bump_s=10)
        _run_until(service, lambda: _reload_samples(service, "refused") >= 1, timeout_s=30)

        _publish(tmp_path / "next.pt", served, bump_s=20)
        deadline = time.monotonic() + 30
        while service.watcher is not None and service.watcher._ready is None:
            assert time.monotonic() < deadline, "the new artefact was never validated"
            time.sleep(0.05)
        _produce(bootstrap, topics["sales"], second)
        _run_until(service, lambda: service.stats.events >= len(first) + len(second))
        service.commit()
        total = service.stats.forecasts
        assert _reload_samples(service, "loaded") == 1.0
        info = service.registry.get_sample_value(
            "mqcast_model_info", {"version": new_version, "device": "cpu", "precision": "fp32", "freq": "D"}
        )
        assert info == 1.0
    finally:
        service.close()
    records = _consume_all(bootstrap, topics["forecasts"], total)
    assert len(records) == total and total > before > 0
    versions = [orjson.loads(r.value)["model_version"] for r in records]
    # Every event was forecast once; the forecasts before the swap carry the old version, the later ones
    # the new, and the refused artefact never served.
    assert versions.count(predictor.version) == before
    assert versions.count(new_version) == total - before


def test_backlog_beyond_the_turn_budget_pauses_input_and_loses_nothing(bootstrap, topic_factory, tiny_model):
    topics = {
        "sales": topic_factory(partitions=1),
        "forecasts": topic_factory(partitions=1),
        "dlq": topic_factory(),
    }
    base = _config(bootstrap, topics, tiny_model, "g-backpressure")
    cfg = ServiceConfig(
        base.kafka,
        base.model,
        BatcherConfig(max_batch=16, max_delay_ms=0),
        base.metrics,
        base.durability,
        flow=FlowConfig(turn_budget_ms=1, max_pending_rows=1_000_000, max_poll_interval_ms=60_000),
    )
    items = [f"p{i}" for i in range(3000)]
    # Every item sells once a day, all within the day, so each closed day is one 3000-row bucket roll.
    events = [
        {"item_id": item, "ts": T0 + d * DAY + (k % 20) * 3_600_000 + k, "qty": 1.0 + (d + k) % 3}
        for d in range(3)
        for k, item in enumerate(items)
    ]
    _produce(bootstrap, topics["sales"], events)
    service = ForecastService(cfg, Predictor.load(tiny_model, "cpu"), CollectorRegistry())
    paused_seen = 0
    try:

        def done() -> bool:
            nonlocal paused_seen
            paused_seen = max(paused_seen, len(service.consumer.paused()))
            return service.stats.events >= len(events) and service.batcher.pending_rows == 0

        _run_until(service, done, timeout_s=120)
        service.commit()
        expected = service.stats.forecasts
        pauses = service.registry.get_sample_value("mqcast_backpressure_pauses_total")
        assert not service.consumer.paused()  # resumed once the backlog was worked off
    finally:
        service.close()
    assert pauses and pauses >= 1 and paused_seen == 1
    # Two closed days for 3000 items, every forecast published exactly once.
    assert expected == 2 * len(items)
    records = _consume_all(bootstrap, topics["forecasts"], expected, timeout_s=60)
    keys = {(r.key, orjson.loads(r.value)["origin_ms"]) for r in records}
    assert len(records) == len(keys) == expected
