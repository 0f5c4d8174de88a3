"""The backtest's ffn rung: as many feed-forward nets as the MQ-CNN rungs average, side by side."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from histories import seasonal_history

from model.baselines import RUNGS, FeedForward, FeedForwardEnsemble, ForecastSpec

SPEC = ForecastSpec(horizons=7, context_length=28, max_seconds=60.0)
NET = {"hidden": 16, "max_steps": 40, "eval_every": 20}
ORIGINS = np.array([40, 60, 79])


def _fit(spec: ForecastSpec, threads: int, freq: str | None = None) -> FeedForwardEnsemble:
    history = seasonal_history(n_items=10, n_days=90)
    if freq is not None:
        history = dataclasses.replace(history, freq=freq)
    rung = FeedForwardEnsemble(spec, **NET)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rung.fit(history, 80)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    return rung


def test_the_ffn_rung_forecasts_the_mean_of_its_nets_from_consecutive_seeds():
    rung = _fit(dataclasses.replace(SPEC, ensemble=2, seed=3), threads=1)
    history = seasonal_history(n_items=10, n_days=90)
    assert [n.spec.seed for n in rung.nets] == [3, 4]
    each = [n.predict(history, ORIGINS) for n in rung.nets]
    tracked = np.isfinite(each[0])
    assert tracked.any() and not np.allclose(each[0][tracked], each[1][tracked])
    np.testing.assert_allclose(rung.predict(history, ORIGINS), (each[0] + each[1]) / 2, rtol=1e-6)
    assert rung.info["networks"] == 2 and rung.info["steps"] == 2 * NET["max_steps"]

    alone = FeedForward(dataclasses.replace(SPEC, seed=3), **NET)
    alone.fit(history, 80)
    np.testing.assert_array_equal(alone.predict(history, ORIGINS), each[0])


def test_nets_trained_side_by_side_equal_nets_trained_one_after_the_other():
    spec = dataclasses.replace(SPEC, ensemble=2)
    side_by_side = _fit(spec, threads=2)
    one_by_one = _fit(spec, threads=1)
    history = seasonal_history(n_items=10, n_days=90)
    np.testing.assert_array_equal(
        side_by_side.predict(history, ORIGINS), one_by_one.predict(history, ORIGINS)
    )


def test_each_net_gets_the_rung_budget_times_the_nets_over_the_rounds_they_train_in():
    side_by_side = _fit(dataclasses.replace(SPEC, ensemble=2), threads=2)
    assert [n.spec.max_seconds for n in side_by_side.nets] == [120.0, 120.0]
    one_by_one = _fit(dataclasses.replace(SPEC, ensemble=2), threads=1)
    assert [n.spec.max_seconds for n in one_by_one.nets] == [60.0, 60.0]


def test_without_an_ensemble_size_the_rung_has_as_many_nets_as_the_bucket_units_mqcnn():
    assert len(_fit(SPEC, threads=1).nets) == 1  # daily: one MQ-CNN
    assert len(_fit(SPEC, threads=1, freq="W").nets) == 2  # weekly: two
    assert isinstance(RUNGS["ffn"](SPEC, None), FeedForwardEnsemble)


def test_a_net_that_fails_stops_the_one_beside_it(monkeypatch):
    history = seasonal_history(n_items=10, n_days=90)
    steps: dict[int, int] = {}
    forward = FeedForward._forward

    def failing(self, *a):
        if self.net.training:
            steps[self.spec.seed] = steps.get(self.spec.seed, 0) + 1
            if self.spec.seed == 1 and steps[1] == 5:
                raise RuntimeError("out of memory, say")
        return forward(self, *a)

    monkeypatch.setattr(FeedForward, "_forward", failing)
    rung = FeedForwardEnsemble(dataclasses.replace(SPEC, ensemble=2), **{**NET, "max_steps": 100_000})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            rung.fit(history, 80)
    finally:
        torch.set_num_threads(before)
    assert steps[1] == 5 and steps[0] < 1_000  # of 100,000: net 0 stopped at its next step
