"""Feedback features: the serving ledger and the training replay agree."""

from __future__ import annotations

import numpy as np

from state.config import StateConfig
from state.feedback import replay_feedback
from state.partition import PartitionState

DAY = 86_400_000


def test_ledger_feedback_equals_training_replay():
    """Serving a history bucket by bucket gives the features the trainer computes in one pass."""
    rng = np.random.default_rng(1)
    n_items, n_days, horizons, L = 5, 30, 3, 7
    quantiles = (0.1, 0.5, 0.9)
    qty = rng.poisson(3.0, (n_items, n_days)).astype(np.float32)
    first = np.array([0, 0, 4, 10, 0])
    observed = np.arange(n_days)[None, :] >= first[:, None]
    qty = np.where(observed, qty, 0)
    forecasts = np.full((n_items, n_days, horizons, len(quantiles)), np.nan, dtype=np.float32)

    cfg = StateConfig(
        freq="D", context_length=L, horizons=horizons, quantiles=quantiles, allowed_lateness_ms=0
    )
    s = PartitionState(cfg)
    served = np.zeros((n_items, n_days, 6), dtype=np.float32)
    ids = np.array([f"i{i}" for i in range(n_items)], dtype=object)
    for t in range(n_days + 1):
        if t < n_days:
            live = observed[:, t]
            # one event per live item per day (qty may be zero), at noon
            s.ingest(ids[live], np.full(live.sum(), t * DAY + DAY // 2), qty[live, t], np.ones(live.sum()))
        while s.closable() is not None:
            c = s.close_next()
            rows = [int(r[1:]) for r in c.item_ids]
            served[rows, c.bucket] = c.feedback
            base = rng.uniform(0, 5, (len(rows), 1, 1)).astype(np.float32)
            values = np.sort(base + rng.uniform(0, 3, (len(rows), horizons, 3)).astype(np.float32), axis=-1)
            s.record_forecasts(c.bucket, c.rows, values)
            forecasts[rows, c.bucket] = values
    replayed = replay_feedback(forecasts, qty, observed, L, quantiles)
    np.testing.assert_allclose(served[:, : n_days - 1], replayed[:, : n_days - 1], rtol=1e-5, atol=1e-6)
    assert np.abs(replayed).sum() > 0
