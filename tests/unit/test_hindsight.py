"""Hindsight references: each group's quantiles of its own scored actuals."""

from __future__ import annotations

import numpy as np
import pytest

from model.hindsight import hindsight_forecasts, hindsight_rows
from model.metrics import pinball

Q = (0.1, 0.5, 0.9)


def _actuals(seed: int = 0) -> np.ndarray:
    """Lumpy demand [N=6, O=4, H=5] with unscored cells; item 5 has none scored."""
    rng = np.random.default_rng(seed)
    y = rng.poisson(2.0, size=(6, 4, 5)) * (rng.random((6, 4, 5)) < 0.4) * rng.integers(1, 20, (6, 4, 5))
    y = y.astype(np.float64)
    y[rng.random(y.shape) < 0.2] = np.nan
    y[5] = np.nan
    return y


@pytest.mark.parametrize("group", ["item", "item-window"])
def test_each_group_gets_the_inverted_cdf_quantiles_of_its_scored_actuals(group):
    y = _actuals()
    got = hindsight_forecasts(y, Q, group)
    assert got.shape == (*y.shape, len(Q))
    for i in range(5):
        windows = [slice(None)] if group == "item" else [k for k in range(y.shape[1])]
        for w in windows:
            cells = y[i][w]
            want = np.quantile(cells[np.isfinite(cells)], Q, method="inverted_cdf")
            np.testing.assert_array_equal(
                got[i][w].reshape(-1, len(Q)), np.broadcast_to(want, (cells.size, len(Q)))
            )
    assert np.isnan(got[5]).all()  # an item without scored cells gets no forecast


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
