"""The lower rungs of the ladder on small synthetic histories with known structure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from histories import PATTERN, seasonal_history

from model.baselines import (
    RUNGS,
    ExponentialSmoothing,
    FeedForward,
    ForecastSpec,
    QuantileForest,
    SeasonalNaive,
    _invert_cdf,
    _Panel,
    make_forecaster,
    masked_quantiles,
    rolling_scale,
)
from model.features import FUTURE_COVARIATES, calendar_features
from model.history import History, bucket_start_ms
from model.network import WindowMLP

torch.set_num_threads(1)

SPEC = ForecastSpec(horizons=10, quantiles=(0.1, 0.5, 0.9), context_length=28, seed=0, max_seconds=3.0)


def small(name: str, spec: ForecastSpec = SPEC):
    """A rung sized for a unit test."""
    if name == "qrf":
        return QuantileForest(spec, n_rows=4000, max_trees=20, trees_per_round=10, min_samples_leaf=5)
    if name == "ffn":
        return FeedForward(spec, hidden=32, max_steps=150, eval_every=50)
    return make_forecaster(name, spec)


@pytest.fixture(scope="module")
def history() -> History:
    return seasonal_history()


@pytest.mark.parametrize("name", ["naive", "ets", "qrf", "ffn"])
def test_shape_monotone_nonnegative(history, name):
    until = 84
    f = small(name)
    f.fit(history.head(until), until)
    origins = np.array([70, 83, 90, 100])
    pred = f.predict(history, origins)
    assert pred.shape == (history.n_items, origins.size, SPEC.horizons, 3)
    assert pred.dtype == np.float32
    tracked = history.observed.argmax(axis=1)[:, None] <= origins[None, :]
    assert np.all(np.isfinite(pred[tracked]))
    assert np.all(np.isnan(pred[~tracked]))  # the late item before its first sale
    assert (~tracked).any()
    fin = pred[tracked]
    assert np.all(fin >= 0)
    assert np.all(np.diff(fin, axis=-1) >= 0)
    # Some spread: the outer quantiles are not all equal to the median.
    assert np.any(fin[..., -1] > fin[..., 0])


def test_seasonal_naive_reproduces_pure_seasonal_series():
    h = seasonal_history(noise=False)
    f = SeasonalNaive(SPEC)
    f.fit(h.head(70), 70)
    origins = np.array([69, 75, 90])
    pred = f.predict(h, origins)
    cols = origins[:, None] + 1 + np.arange(SPEC.horizons)[None, :]
    truth = h.qty[:, cols]  # the pattern continues beyond the data too, read from it where inside
    inside = cols < h.n_buckets
    np.testing.assert_array_equal(pred[..., 1][:, inside], truth[:, inside])
    # No residuals in sample, so no spread either.
    np.testing.assert_array_equal(pred[..., 0], pred[..., 2])


def test_seasonal_naive_falls_back_to_naive_on_short_history():
    h = seasonal_history(n_items=2, n_days=30, noise=False)
    h.observed[:, :25] = False
    h.qty[:, :25] = 0
    h.qty[:, 25:] = [[3.0], [70.0]]  # flat since the first sale
    f = SeasonalNaive(dataclasses.replace(SPEC, horizons=3))
    f.fit(h.head(28), 28)  # three observed days only: fewer than a season
    pred = f.predict(h, np.array([27]))
    np.testing.assert_array_equal(pred[:, 0, :, 1], [[3.0] * 3, [70.0] * 3])


def test_fit_uses_only_columns_before_until(history):
    for cls in (SeasonalNaive, ExponentialSmoothing):
        a, b = cls(SPEC), cls(SPEC)
        a.fit(history, 84)
        b.fit(history.head(84), 84)
        np.testing.assert_array_equal(a.predict(history, np.array([90])), b.predict(history, np.array([90])))


def test_ets_follows_an_additive_level_shift():
    h = seasonal_history(n_items=4, n_days=140, noise=False)
    h.qty[:, 100:] += 5.0 * h.qty[:, :7].mean(axis=1, keepdims=True)
    f = ExponentialSmoothing(SPEC)
    f.fit(h.head(126), 126)
    pred = f.predict(h, np.array([125]))[:, 0, :, 1]
    truth = h.qty[:, 126:136]
    assert np.abs(pred - truth).sum() / truth.sum() < 0.05


def test_ets_smooths_noise_better_than_seasonal_naive():
    h = seasonal_history(n_items=16, n_days=140, seed=3)
    mean = np.geomspace(0.5, 50.0, 16)[:, None] * PATTERN[np.arange(126, 136) % 7][None, :]
    err = {}
    for cls in (SeasonalNaive, ExponentialSmoothing):
        f = cls(SPEC)
        f.fit(h.head(126), 126)
        err[cls] = np.abs(f.predict(h, np.array([125]))[:, 0, :, 1] - mean).sum() / mean.sum()
    assert err[ExponentialSmoothing] < 0.6 * err[SeasonalNaive], err


def test_quantile_forest_recovers_conditional_quantiles():
    """Two regimes with the same mean structure in the feature but different spreads: a mean forest
    cannot tell their quantiles apart, Meinshausen's weights can."""
    rng = np.random.default_rng(0)
    n = 6000
    group = rng.integers(0, 2, n)
    x = np.stack([group, rng.random(n)], axis=1).astype(np.float32)
    y = np.where(group == 0, rng.uniform(0.0, 1.0, n), rng.uniform(10.0, 20.0, n))
    f = QuantileForest(ForecastSpec(quantiles=(0.1, 0.5, 0.9)), max_trees=20, min_samples_leaf=20)
    f.fit_xy(x, y)
    q = f.quantiles_of(np.array([[0, 0.5], [1, 0.5]], dtype=np.float32))
    np.testing.assert_allclose(q[0], [0.1, 0.5, 0.9], atol=0.08)
    np.testing.assert_allclose(q[1], [11.0, 15.0, 19.0], atol=0.8)


def test_invert_cdf_point_mass_and_interpolation():
    edges = np.array([0.0, 1.0, 3.0])
    # 60 % at exactly 0, 20 % in (0, 1], 20 % in (1, 3].
    cdf = np.array([[0.6, 0.8, 1.0]])
    q = _invert_cdf(cdf, edges, np.array([0.1, 0.6, 0.7, 0.9]))
    np.testing.assert_allclose(q[0], [0.0, 0.0, 0.5, 2.0])


def test_masked_quantiles_match_numpy():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(5, 40))
    m = rng.random((5, 40)) > 0.4
    m[4] = False
    levels = np.array([0.1, 0.5, 0.9])
    got = masked_quantiles(v, m, levels)
    for i in range(4):
        np.testing.assert_allclose(got[i], np.quantile(v[i][m[i]], levels))
    assert np.all(np.isnan(got[4]))


def test_rolling_scale_matches_loop():
    h = seasonal_history(n_items=3, n_days=20)
    s = rolling_scale(h.qty, h.observed, 5)
    for i in range(3):
        for t in range(20):
            lo = max(0, t - 4)
            o = h.observed[i, lo : t + 1]
            want = 1.0 + (h.qty[i, lo : t + 1][o].mean() if o.any() else 0.0)
            assert s[i, t] == pytest.approx(want, rel=1e-5)


def test_registry_names_the_ladder():
    assert list(RUNGS)[:4] == ["naive", "ets", "qrf", "ffn"]
    with pytest.raises(ValueError, match="unknown rung"):
        make_forecaster("arima", SPEC)
    with pytest.raises(ValueError, match="replay"):
        make_forecaster("mqcnn-feedback", SPEC)


def test_per_item_rungs_refuse_other_items(history):
    f = SeasonalNaive(SPEC)
    f.fit(history.head(84), 84)
    other = dataclasses.replace(history, item_ids=history.item_ids[::-1].copy())
    with pytest.raises(ValueError, match="items"):
        f.predict(other, np.array([90]))


def test_feed_forward_quantiles_below_zero_are_zero_served_but_trained_on():
    torch.manual_seed(0)
    net = WindowMLP(context_length=8, horizons=3, n_quantiles=3, n_static=0, vocab=4, hidden=16)
    with torch.no_grad():
        net.net[-1].bias -= 50.0
    x = (
        torch.rand(5, 8),
        torch.ones(5, 8),
        torch.zeros(5),
        torch.zeros(5, 3, len(FUTURE_COVARIATES)),
        torch.zeros(5, 0),
    )
    net.eval()
    assert torch.all(net.scaled_quantiles(*x) == 0)
    net.train()
    out = net.scaled_quantiles(*x)
    assert torch.all(out < 0)
    (-out).sum().backward()  # a loss that wants them higher reaches the weights
    assert net.net[-1].bias.grad is not None and torch.all(net.net[-1].bias.grad[::3] != 0)


def test_feed_forward_keeps_the_averaged_weights_unless_told_not_to(history):
    until = 84
    averaged = small("ffn")
    raw = small("ffn", dataclasses.replace(SPEC, ema_decay=0.0))
    assert averaged.ema_decay == 0.999 and raw.ema_decay == 0.0
    with pytest.raises(ValueError, match="ema_decay"):
        dataclasses.replace(SPEC, ema_decay=1.0)
    for f in (averaged, raw):
        f.fit(history.head(until), until)
        assert np.isfinite(f.info["val_wql"])
    # Same seed, same batches: only the averaging differs, and it changes the weights kept.
    assert any(
        not torch.equal(a, b)
        for a, b in zip(averaged.net.state_dict().values(), raw.net.state_dict().values(), strict=True)
    )


def test_feed_forward_fits_the_same_weights_for_a_seed_when_its_steps_end_the_run(history):
    until = 84
    # A budget so far beyond what 150 small steps need that its whole percents never advance the
    # schedule (the time share counts in them), not even on a busy machine.
    spec = dataclasses.replace(SPEC, max_seconds=300.0)
    a, b = small("ffn", spec), small("ffn", spec)
    for f in (a, b):
        f.fit(history.head(until), until)
        assert f.info["steps"] == 150
    # The learning rate follows the step count, not the wall clock, so nothing differs.
    for x, y in zip(a.net.state_dict().values(), b.net.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_panel_calendar_equals_the_features_of_the_buckets_asked_for():
    history = seasonal_history()
    panel = _Panel(history, context_length=28)
    rng = np.random.default_rng(0)
    # Inside the data, before it and past it (the rungs' targets), in any shape and order.
    for shape, (lo, hi) in [((5, 3), (0, 50)), ((7,), (-40, 10)), ((4, 2), (100, 300)), ((0,), (0, 1))]:
        cols = rng.integers(lo, hi, size=shape)
        want = calendar_features(bucket_start_ms(history.first_bucket + cols, history.freq))
        np.testing.assert_array_equal(panel.calendar(cols), want)
