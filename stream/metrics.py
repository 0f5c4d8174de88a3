"""Prometheus metrics of the service, built against an injected registry."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from state.ledger import RealisedScore

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A snapshot takes about 3 KB an item: from tens of milliseconds to minutes for millions of items.
_CHECKPOINT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BATCH_BUCKETS = (1, 16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)


@dataclass
class _Window:
    pinball: np.ndarray
    abs_actual: float
    hits: int
    scored: int


class ServiceMetrics:
    """Every metric the service exports; one instance per service, on the registry it is given."""

    def __init__(self, registry: CollectorRegistry, quantiles: tuple[float, ...], window: int = 28) -> None:
        self.registry = registry
        self.quantiles = quantiles
        self.events_consumed = Counter(
            "mqcast_events_consumed",
            "Sales events read from the input topic.",
            ["partition"],
            registry=registry,
        )
        self.events_invalid = Counter(
            "mqcast_events_invalid",
            "Events that failed validation (sent to the dead-letter topic).",
            registry=registry,
        )
        self.events_late = Counter(
            "mqcast_events_late",
            "Events whose bucket had already closed (sent to the dead-letter topic).",
            registry=registry,
        )
        self.dead_letters = Counter(
            "mqcast_dead_letters", "Messages written to the dead-letter topic.", ["reason"], registry=registry
        )
        self.consumer_lag = Gauge(
            "mqcast_consumer_lag",
            "Messages between the consumer position and the log end.",
            ["partition"],
            registry=registry,
        )
        self.buckets_closed = Counter(
            "mqcast_buckets_closed",
            "Buckets closed by the partition watermark.",
            ["partition"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "mqcast_batch_size", "Item forecasts per model call.", buckets=_BATCH_BUCKETS, registry=registry
        )
        self.inference_seconds = Histogram(
            "mqcast_inference_seconds",
            "Wall time of one model call (gather to output on host).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end_seconds = Histogram(
            "mqcast_end_to_end_seconds",
            "From a bucket closing to its forecasts being acknowledged by the broker.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        # The two parts of the end-to-end latency that are not the model's: a bucket waiting for
        # its turn (the micro-batch delay, a backlog) and the turn waiting for the broker.
        self.turn_wait_seconds = Histogram(
            "mqcast_turn_wait_seconds",
            "From a bucket closing to the start of the forecast turn that takes it.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ack_wait_seconds = Histogram(
            "mqcast_ack_wait_seconds",
            "Per forecast turn, from its last message handed to the producer to the broker's last ack.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.checkpoint_seconds = Histogram(
            "mqcast_checkpoint_seconds",
            "Per checkpoint, from encoding its first snapshot to the broker's last ack.",
            buckets=_CHECKPOINT_BUCKETS,
            registry=registry,
        )
        self.checkpoint_hold_seconds = Histogram(
            "mqcast_checkpoint_hold_seconds",
            "Per checkpoint, how long it held the loop: encoding the snapshots, which are then written "
            "beside it (with exactly-once, on it, until acknowledged).",
            buckets=_CHECKPOINT_BUCKETS,
            registry=registry,
        )
        self.forecasts_published = Counter(
            "mqcast_forecasts_published", "Item forecasts acknowledged by the broker.", registry=registry
        )
        self.items_tracked = Gauge(
            "mqcast_items_tracked", "Items held in state across owned partitions.", registry=registry
        )
        self.items_evicted = Counter(
            "mqcast_items_evicted",
            "Items forgotten after selling nothing for --evict-after buckets.",
            registry=registry,
        )
        self.realised_pinball = Gauge(
            "mqcast_realised_pinball_loss",
            "Mean pinball loss of realised forecasts over the recent closed buckets, raw units.",
            ["quantile"],
            registry=registry,
        )
        self.realised_wql = Gauge(
            "mqcast_realised_wql",
            "Weighted quantile loss (2 * sum pinball / sum |y|, mean over quantiles) over recent buckets.",
            registry=registry,
        )
        self.interval_coverage = Gauge(
            "mqcast_interval_coverage",
            "Share of realised actuals inside the outer forecast interval over recent buckets.",
            registry=registry,
        )
        self.nominal_coverage = Gauge(
            "mqcast_interval_nominal_coverage",
            "Share of actuals the outer forecast interval should hold (highest minus lowest quantile).",
            registry=registry,
        )
        self.nominal_coverage.set(quantiles[-1] - quantiles[0])
        self.commits = Counter(
            "mqcast_commits", "Offset commits after forecasts were acknowledged.", registry=registry
        )
        self.model = Info("mqcast_model", "The model being served.", registry=registry)
        self.model_reloads = Counter(
            "mqcast_model_reloads",
            "Attempts to swap in a new model artefact, by result (loaded / refused).",
            ["result"],
            registry=registry,
        )
        self.ready = Gauge(
            "mqcast_ready",
            "1 once the model is loaded and the owned partitions' state is restored, else 0.",
            registry=registry,
        )
        self.partitions_paused = Gauge(
            "mqcast_partitions_paused",
            "Input partitions paused because forecasts or publishing fell behind.",
            registry=registry,
        )
        self.backpressure_pauses = Counter(
            "mqcast_backpressure_pauses",
            "Times the consumer paused its partitions because the pipeline fell behind.",
            registry=registry,
        )
        self.last_forecast_timestamp = Gauge(
            "mqcast_last_forecast_timestamp_seconds",
            "Unix time of the last forecast acknowledged by the broker.",
            registry=registry,
        )
        self._window: deque[_Window] = deque(maxlen=window)

    def observe_score(self, score: RealisedScore) -> None:
        """Add one closed bucket's realised score to the rolling accuracy gauges."""
        if score.n_scored == 0:
            return
        self._window.append(
            _Window(score.pinball_sum, score.abs_actual_sum, score.interval_hits, score.n_scored)
        )
        pin = np.sum([w.pinball for w in self._window], axis=0)
        scored = sum(w.scored for w in self._window)
        abs_y = sum(w.abs_actual for w in self._window)
        for q, value in zip(self.quantiles, pin, strict=True):
            self.realised_pinball.labels(quantile=f"{q:g}").set(value / scored)
        if abs_y > 0:
            self.realised_wql.set(float(2.0 * pin.mean() / abs_y))
        self.interval_coverage.set(sum(w.hits for w in self._window) / scored)

    def rolling_wql(self) -> float | None:
        """The current rolling wQL, or None before anything was realised."""
        abs_y = sum(w.abs_actual for w in self._window)
        if not self._window or abs_y <= 0:
            return None
        return float(2.0 * np.sum([w.pinball for w in self._window], axis=0).mean() / abs_y)
