"""Demand classes (ADI / CV²) and the backtest's accuracy per class."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from histories import seasonal_history

from model.backtest import BacktestConfig, build_forecasters, run_backtest
from model.demand_class import ADI_CUTOFF, CLASSES, CV2_CUTOFF, demand_classes

Q = (0.1, 0.5, 0.9)


def _classify(*rows: list[float], observed: np.ndarray | None = None) -> list[str]:
    qty = np.array(rows, dtype=np.float64)
    codes, _, _ = demand_classes(qty, np.ones(qty.shape, bool) if observed is None else observed)
    return [CLASSES[c] for c in codes]


def test_the_four_classes_follow_demand_frequency_and_size_spread():
    steady, spread = [5.0, 6.0] * 6, [1.0, 20.0] * 6
    every_third_steady = [5.0, 0.0, 0.0, 6.0, 0.0, 0.0] * 2
    every_third_spread = [1.0, 0.0, 0.0, 20.0, 0.0, 0.0] * 2
    assert _classify(steady, spread, every_third_steady, every_third_spread) == [
        "smooth",
        "erratic",
        "intermittent",
        "lumpy",
    ]


def test_adi_and_cv2_are_computed_over_observed_buckets_only():
    qty = np.array([[4.0, 0.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    observed = np.array([[True, True, True, True, False, False, False, False]])
    codes, adi, cv2 = demand_classes(qty, observed)
    # 4 observed buckets, 2 with demand; sizes 4 and 8: mean 6, population variance 4.
    assert adi[0] == pytest.approx(2.0)
    assert cv2[0] == pytest.approx(4.0 / 36.0)
    assert CLASSES[codes[0]] == "intermittent"
    assert adi[0] > ADI_CUTOFF and cv2[0] < CV2_CUTOFF


def test_items_with_fewer_than_two_demands_cannot_be_placed():
    codes, adi, cv2 = demand_classes(np.array([[0.0, 3.0, 0.0], [0.0, 0.0, 0.0]]), np.ones((2, 3), bool))
    assert [CLASSES[c] for c in codes] == ["sparse", "sparse"]
    assert adi[0] == pytest.approx(3.0) and np.isnan(adi[1])
    assert np.isnan(cv2).all()


def test_backtest_reports_wql_by_class_that_adds_up_to_the_overall_wql(tmp_path):
    h = seasonal_history(late_first=None, price=None)
    # Make a few items intermittent so that the table has more than one class.
    h.qty[:3, ::2] = 0.0
    cfg = BacktestConfig(quantiles=Q, horizons=7, context_length=28, n_origins=3, spacing=7)
    result = run_backtest(h, build_forecasters(["naive", "ets"], h, cfg), cfg, progress=False)
    rows = result.class_rows()
    assert len(rows) >= 2
    assert sum(r["cell_share"] for r in rows) == pytest.approx(1.0)
    assert sum(r["volume_share"] for r in rows) == pytest.approx(1.0)
    assert sum(r["items"] for r in rows) == int(np.isfinite(result.actuals).any(axis=(1, 2)).sum())
    for rung in result.rungs:
        # wQL is a ratio over the demand, so the classes' wQL weighted by their demand is the whole.
        combined = sum(r["volume_share"] * r[f"wql_{rung.name}"] for r in rows)
        assert combined == pytest.approx(rung.wql, rel=1e-9)

    paths = {p.name for p in result.save(tmp_path)}
    assert {"backtest_by_class.csv", "wql_by_class.png"} <= paths
    written = list(csv.DictReader((tmp_path / "backtest_by_class.csv").open()))
    assert [r["class"] for r in written] == [r["class"] for r in rows]
    assert (
        json.loads((tmp_path / "backtest.json").read_text())["by_demand_class"][0]["class"]
        == rows[0]["class"]
    )
    assert "| class |" in (tmp_path / "backtest.md").read_text()
