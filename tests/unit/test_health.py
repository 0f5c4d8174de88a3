"""Liveness, readiness and metrics over HTTP, with an injected clock instead of waiting."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from stream.health import Health, serve_http
from stream.metrics import ServiceMetrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def endpoint():
    clock = FakeClock()
    health = Health(stall_after_s=30.0, clock=clock)
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry, (0.1, 0.5, 0.9))
    server = serve_http(registry, health, "127.0.0.1", 0)
    try:
        yield server.server_address[1], health, clock, metrics
    finally:
        server.shutdown()
        server.server_close()


def test_not_ready_until_restored_then_ready(endpoint):
    port, health, _, _ = endpoint
    code, body = _get(port, "/readyz")
    assert code == 503 and "not joined" in json.loads(body)["reason"]
    health.set_ready(False, "restoring the state of 2 partition(s)")
    assert json.loads(_get(port, "/readyz")[1])["reason"].startswith("restoring")
    health.set_ready(True)
    assert _get(port, "/readyz")[0] == 200


def test_liveness_fails_when_the_loop_stops_turning(endpoint):
    port, health, clock, _ = endpoint
    health.set_ready(True)
    assert _get(port, "/healthz")[0] == 200
    clock.now += 29.0
    assert _get(port, "/healthz")[0] == 200
    clock.now += 2.0
    code, body = _get(port, "/healthz")
    assert code == 503 and json.loads(body)["seconds_since_last_turn"] == pytest.approx(31.0)
    # A stalled loop is not ready either, whatever it said before.
    assert _get(port, "/readyz")[0] == 503
    health.beat()
    assert _get(port, "/healthz")[0] == 200 and _get(port, "/readyz")[0] == 200


def test_metrics_are_served_and_unknown_paths_are_404(endpoint):
    port, _, _, metrics = endpoint
    metrics.forecasts_published.inc(7)
    code, body = _get(port, "/metrics")
    assert code == 200 and b"mqcast_forecasts_published_total 7.0" in body
    assert _get(port, "/nope")[0] == 404
