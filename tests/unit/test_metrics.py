"""Accuracy metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from model.metrics import coverage, pinball, volatility, weighted_quantile_loss

Q = np.array([0.1, 0.5, 0.9])


def test_pinball_is_asymmetric():
    # y = 10 over predictions 8 (under) and 12 (over)
    np.testing.assert_allclose(pinball(np.array([10.0]), np.array([[8.0, 8.0, 8.0]]), Q), [[0.2, 1.0, 1.8]])
    np.testing.assert_allclose(
        pinball(np.array([10.0]), np.array([[12.0, 12.0, 12.0]]), Q), [[1.8, 1.0, 0.2]]
    )


def test_weighted_quantile_loss_ignores_missing_cells():
    y = np.array([10.0, 0.0, np.nan])
    pred = np.array([[8.0, 10.0, 12.0], [0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    per_q, mean = weighted_quantile_loss(y, pred, Q)
    # row 1 (y=10): 0.1*2, 0, 0.1*2; row 2 (y=0, over-forecast): 0, 0.5*1, 0.1*2; row 3 has no actual
    expected = 2 * np.array([0.2 + 0.0, 0.0 + 0.5, 0.2 + 0.2]) / 10.0
    np.testing.assert_allclose(per_q, expected)
    assert mean == pytest.approx(expected.mean())


def test_coverage_counts_inside_the_interval():
    assert (
        coverage(np.array([1.0, 5.0, 9.0, np.nan]), np.array([0, 6, 0, 0.0]), np.array([2, 8, 9, 1.0]))
        == 2 / 3
    )


def test_volatility_measures_revisions_of_the_same_target():
    # two origins, two horizons; the target of (origin 0, h=2) is the target of (origin 1, h=1)
    f = np.zeros((1, 2, 2, 3))
    f[0, 0, 1, 1] = 4.0
    f[0, 1, 0, 1] = 6.0
    assert volatility(f, np.array([[2.0, 2.0]]), median_index=1) == pytest.approx(2.0 / 2.0)
