"""Hooks for whoever embeds the service (the demo, benchmarks, tests).

Kept apart from the service so that importing them costs nothing: the command line builds every
subcommand's parser, the demo's included, without loading torch or the Kafka client.
"""

from __future__ import annotations

import numpy as np

from state.partition import ClosedBucket


class ServiceObserver:
    """Hooks for whoever embeds the service (the demo, tests); the defaults do nothing."""

    def on_close(self, partition: int, closed: ClosedBucket) -> None:
        """A bucket closed; ``closed.score`` holds the realised accuracy of older forecasts."""

    def on_forecasts(self, partition: int, closed: ClosedBucket, values: np.ndarray) -> None:
        """Forecasts [n, H, Q] were made for the items of ``closed`` and handed to the producer."""

    def on_published(self, latencies_s: list[float], rows: int) -> None:
        """A micro-batch was acknowledged: seconds from each of its buckets closing, and its size."""

    def on_turn(self, queued_s: list[float], forecast_s: float, flush_s: float) -> None:
        """Where a published micro-batch's latency went: for each of its buckets (in the order of
        ``on_published``'s latencies), seconds from closing to the batch's start; then seconds
        spent forecasting and handing messages to the producer, and seconds waiting for the
        broker's last acknowledgements."""
