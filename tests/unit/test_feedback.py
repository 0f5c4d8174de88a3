"""Feedback features: the serving ledger and the training replay agree."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model.network import ModelArgs
from state.config import StateConfig
from state.feedback import feedback_feature_names, n_feedback_features, replay_feedback, update_feedback
from state.partition import PartitionState

DAY = 86_400_000


@pytest.mark.parametrize(("window", "previous"), [(0, False), (4, False), (2, True)])
def test_ledger_feedback_equals_training_replay(window, previous):
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
        freq="D",
        context_length=L,
        horizons=horizons,
        quantiles=quantiles,
        allowed_lateness_ms=0,
        feedback_window=window,
        feedback_previous=previous,
    )
    s = PartitionState(cfg)
    width = n_feedback_features(len(quantiles), window, horizons if previous else 0)
    served = np.zeros((n_items, n_days, width), dtype=np.float32)
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
    replayed = replay_feedback(forecasts, qty, observed, L, quantiles, window, previous=previous)
    np.testing.assert_allclose(served[:, : n_days - 1], replayed[:, : n_days - 1], rtol=1e-5, atol=1e-6)
    assert np.abs(replayed).sum() > 0
    if window:
        # Every slot of the window was filled for the items tracked from the start.
        assert (replayed[1, -1, 6 : 6 * (1 + window) : 6] == 1.0).all()
    if previous:
        # Horizon h reads what the previous day forecast at h + 1; the last horizon reads nothing.
        prev = replayed[1, -1, 6 * (1 + window) :].reshape(horizons, 4)
        np.testing.assert_array_equal(prev[:-1, 0], 1.0)
        np.testing.assert_array_equal(prev[:-1, 1:], forecasts[1, -2, 1:])
        np.testing.assert_array_equal(prev[-1], 0.0)
        # An item's first day has no previous forecast.
        assert not replayed[3, first[3], 6 * (1 + window) :].any()


def test_window_holds_the_newest_scored_buckets_first():
    quantiles = (0.1, 0.5, 0.9)
    feats = np.zeros((2, n_feedback_features(3, 2)), dtype=np.float32)
    e = 6  # columns per block: averages, then each scored bucket (seen flag first)
    for k in range(1, 4):
        errors = np.full((2, 5), float(k), dtype=np.float32)
        # Item 1 has nothing scored at the second bucket: its window must not move then.
        has = np.array([True, k != 2])
        feats = update_feedback(feats, errors, has, alpha=0.5)
    np.testing.assert_array_equal(feats[0, e : 2 * e], [1, 3, 3, 3, 3, 3])
    np.testing.assert_array_equal(feats[0, 2 * e :], [1, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(feats[1, e : 2 * e], [1, 3, 3, 3, 3, 3])
    np.testing.assert_array_equal(feats[1, 2 * e :], [1, 1, 1, 1, 1, 1])
    # The averages are those of the window-less features.
    plain = np.zeros((2, 6), dtype=np.float32)
    for k in range(1, 4):
        plain = update_feedback(plain, np.full((2, 5), float(k), np.float32), np.array([True, k != 2]), 0.5)
    np.testing.assert_array_equal(feats[:, :e], plain)
    assert len(feedback_feature_names(quantiles, 2)) == feats.shape[1]
    assert feedback_feature_names(quantiles, 2)[e : e + 2] == ("fb_recent1_seen", "fb_recent1_bias")


@pytest.mark.parametrize(("window", "previous"), [(0, False), (3, False), (1, True)])
def test_model_feedback_width_follows_quantiles_window_and_previous(window, previous):
    args = dataclasses.replace(
        ModelArgs(),
        quantiles=(0.05, 0.25, 0.5, 0.75, 0.95),
        feedback_window=window,
        feedback_previous=previous,
    )
    h = args.horizons if previous else 0
    assert (
        args.n_feedback
        == n_feedback_features(5, window, h)
        == len(feedback_feature_names(args.quantiles, window, h))
    )
