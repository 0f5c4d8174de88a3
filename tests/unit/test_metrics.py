"""Accuracy metrics and the training loss on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.loss import pinball_loss
from model.metrics import coverage, pinball, quantile_hits, volatility, weighted_quantile_loss

Q = np.array([0.1, 0.5, 0.9])


def test_pinball_is_asymmetric():
    # y = 10 over predictions 8 (under) and 12 (over)
    np.testing.assert_allclose(pinball(np.array([10.0]), np.array([[8.0, 8.0, 8.0]]), Q), [[0.2, 1.0, 1.8]])
    np.testing.assert_allclose(
        pinball(np.array([10.0]), np.array([[12.0, 12.0, 12.0]]), Q), [[1.8, 1.0, 0.2]]
    )
    assert pinball(np.array([np.nan]), np.array([[1.0, 2.0, 3.0]]), Q).shape == (1, 3)
    assert np.isnan(pinball(np.array([np.nan]), np.array([[1.0, 2.0, 3.0]]), Q)).all()


def test_weighted_quantile_loss_ignores_missing_cells():
    y = np.array([10.0, 0.0, np.nan, 4.0])
    pred = np.array([[8.0, 10.0, 12.0], [0.0, 1.0, 2.0], [5.0, 5.0, 5.0], [np.nan, 1.0, 2.0]])
    per_q, mean = weighted_quantile_loss(y, pred, Q)
    # row 1 (y=10): 0.1*2, 0, 0.1*2; row 2 (y=0, over-forecast): 0, 0.5*1, 0.1*2; rows 3 and 4 lack
    # an actual or a quantile. Denominator: |10| + |0| = 10.
    expected = 2 * np.array([0.2 + 0.0, 0.0 + 0.5, 0.2 + 0.2]) / 10.0
    np.testing.assert_allclose(per_q, expected)
    assert mean == pytest.approx(expected.mean())


def test_weighted_quantile_loss_of_a_zero_forecast_is_twice_the_quantile_level():
    y = np.array([[3.0, 0.0], [1.0, 6.0]])
    per_q, mean = weighted_quantile_loss(y, np.zeros((2, 2, 3)), Q)
    np.testing.assert_allclose(per_q, 2 * Q)
    assert mean == pytest.approx(1.0)


def test_weighted_quantile_loss_without_cells_or_volume_is_nan():
    per_q, mean = weighted_quantile_loss(np.array([np.nan]), np.ones((1, 3)), Q)
    assert np.isnan(per_q).all() and np.isnan(mean)
    per_q, mean = weighted_quantile_loss(np.zeros(2), np.ones((2, 3)), Q)
    assert np.isnan(per_q).all() and np.isnan(mean)


def test_coverage_counts_inside_the_interval_bounds_included():
    y = np.array([1.0, 5.0, 9.0, np.nan, 0.0])
    lo = np.array([0.0, 6.0, 0.0, 0.0, np.nan])
    hi = np.array([2.0, 8.0, 9.0, 1.0, 1.0])
    assert coverage(y, lo, hi) == pytest.approx(2 / 3)
    assert np.isnan(coverage(np.array([np.nan]), np.array([0.0]), np.array([1.0])))


def test_quantile_hits_count_actuals_below_and_on_each_forecast():
    y = np.array([0.0, 0.0, 3.0, 7.0, np.nan])
    pred = np.array([[0.0, 1.0, 4.0], [0.0, 0.0, 2.0], [0.0, 3.0, 5.0], [1.0, 2.0, 6.0], [0.0, 1.0, 2.0]])
    below, at_or_below = quantile_hits(y, pred)
    np.testing.assert_allclose(below, [0 / 4, 1 / 4, 3 / 4])  # strictly below P10 / P50 / P90
    np.testing.assert_allclose(at_or_below, [2 / 4, 3 / 4, 3 / 4])
    assert np.isnan(quantile_hits(np.array([np.nan]), np.zeros((1, 3)))[0]).all()


def test_volatility_measures_revisions_of_the_same_target():
    # Two origins, two horizons; the target of (origin 0, h=2) is the target of (origin 1, h=1).
    f = np.zeros((1, 2, 2, 3))
    f[0, 0, 1, 1] = 4.0
    f[0, 1, 0, 1] = 6.0
    f[0, 1, 0, 0] = 100.0  # other quantiles do not count
    assert volatility(f, np.array([[2.0, 2.0]]), median_index=1) == pytest.approx(2.0 / 2.0)
    assert volatility(f, np.array([[2.0, np.nan, -2.0]])) == pytest.approx(1.0)


def test_volatility_averages_over_pairs_that_exist():
    f = np.full((2, 3, 2, 1), np.nan)
    f[0, 0, 1, 0], f[0, 1, 0, 0] = 1.0, 4.0  # change 3
    f[1, 1, 1, 0], f[1, 2, 0, 0] = 2.0, 1.0  # change 1
    f[1, 0, 1, 0] = 7.0  # its partner (origin 1, h=1) is missing
    assert volatility(f, np.array([4.0])) == pytest.approx(((3.0 + 1.0) / 2) / 4.0)
    assert np.isnan(volatility(f[:, :1], np.array([4.0])))
    assert np.isnan(volatility(f, np.array([0.0])))


def test_torch_loss_sums_masked_weighted_cells():
    q = torch.tensor([0.1, 0.5, 0.9])
    pred = torch.tensor([[[8.0, 10.0, 12.0], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]])  # [1, 3, Q]
    y = torch.tensor([[10.0, 0.0, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # Same cells as the numpy case above: 0.4 + 0.7
    assert pinball_loss(pred, y, mask, q).item() == pytest.approx(1.1)
    weight = torch.tensor([[2.0, 1.0, 1.0]])
    assert pinball_loss(pred, y, mask, q, weight).item() == pytest.approx(2 * 0.4 + 0.7)
    np.testing.assert_allclose(
        pinball(y[0, :2].numpy(), pred[0, :2].numpy(), q.numpy()).sum(), 1.1, rtol=1e-6
    )
