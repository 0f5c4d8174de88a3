"""Hindsight references: each group's quantiles of its own scored actuals."""

from __future__ import annotations

import numpy as np
import pytest

from model.hindsight import closed_buckets, hindsight_forecasts, hindsight_rows
from model.metrics import pinball

Q = (0.1, 0.5, 0.9)


def _actuals(seed: int = 0) -> np.ndarray:
    """Lumpy demand [N=12, O=4, H=5] with unscored cells; the last item has none scored, and one
    bucket no item sold in."""
    rng = np.random.default_rng(seed)
    shape = (12, 4, 5)
    y = (rng.poisson(2.0, size=shape) + 1) * (rng.random(shape) < 0.6) * rng.integers(1, 20, shape)
    y = y.astype(np.float64)
    y[rng.random(y.shape) < 0.2] = np.nan
    y[-1] = np.nan
    y[:, 2, 3] = np.where(np.isfinite(y[:, 2, 3]), 0.0, np.nan)  # a bucket no item sold in
    return y


@pytest.mark.parametrize("group", ["item", "item-window"])
def test_each_group_gets_the_inverted_cdf_quantiles_of_its_actuals_in_open_buckets(group):
    y = _actuals()
    closed = closed_buckets(y)
    assert closed[2, 3] and closed.sum() == 1
    got = hindsight_forecasts(y, Q, group)
    assert got.shape == (*y.shape, len(Q))
    fitted = np.where(closed[None], np.nan, y)  # the closed bucket's zeros are not fitted on
    for i in range(11):
        windows = [slice(None)] if group == "item" else list(range(y.shape[1]))
        for w in windows:
            open_cells = ~closed[w]
            cells = fitted[i][w]
            want = np.quantile(cells[np.isfinite(cells)], Q, method="inverted_cdf")
            np.testing.assert_array_equal(
                got[i][w][open_cells], np.broadcast_to(want, (int(open_cells.sum()), len(Q)))
            )
    np.testing.assert_array_equal(got[:, 2, 3], 0.0)  # the closed bucket: zero for every item
    assert np.isnan(got[-1][~closed]).all()  # an item without scored cells gets no forecast


@pytest.mark.parametrize("group", ["item", "item-window"])
def test_no_constant_over_a_group_beats_its_hindsight_quantile(group):
    y = _actuals(1)
    best = hindsight_forecasts(y, Q, group)
    ok = np.isfinite(y)
    base = np.where(ok[..., None], pinball(np.nan_to_num(y), np.nan_to_num(best), np.asarray(Q)), 0.0)
    for shift in (-1.0, -0.5, 0.5, 1.0):
        moved = np.where(
            ok[..., None], pinball(np.nan_to_num(y), np.nan_to_num(best) + shift, np.asarray(Q)), 0.0
        )
        axes = (1, 2) if group == "item" else (2,)
        assert np.all(moved.sum(axis=axes) >= base.sum(axis=axes) - 1e-9)


def test_the_window_reference_never_scores_worse_than_the_item_one():
    for seed in range(5):
        item, window = hindsight_rows(_actuals(seed), Q)
        assert window["wql"] <= item["wql"]
        assert 0 <= window["coverage_p10_p90"] <= 1


def test_an_unknown_group_is_refused():
    with pytest.raises(ValueError, match="group"):
        hindsight_forecasts(_actuals(), Q, "store")
