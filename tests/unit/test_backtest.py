"""The rolling-origin backtest: origins, look-ahead protection, metrics against hand computation."""

from __future__ import annotations

import argparse
import csv
import gzip
import json

import numpy as np
import pytest
import torch
from histories import seasonal_history

from model.backtest import (
    BacktestConfig,
    LeakageError,
    RungResult,
    build_forecasters,
    make_plan,
    run_backtest,
)
from model.baselines import RUNGS, ForecastSpec
from model.errors import ModelError
from model.history import History, dates_to_buckets
from model.train import TrainConfig
from stream.backtest import LADDER, add_backtest_arguments, run_backtest_command

torch.set_num_threads(1)
Q = (0.1, 0.5, 0.9)


class Spy:
    """Records what it is shown; forecasts the last value at the origin plus a fixed spread."""

    name = "spy"

    def __init__(self, spec: ForecastSpec) -> None:
        self.spec = spec
        self.fit_calls: list[tuple[int, int]] = []
        self.predict_calls: list[tuple[int, np.ndarray]] = []

    def fit(self, history: History, until: int) -> None:
        self.fit_calls.append((history.n_buckets, until))

    def predict(self, history: History, origins: np.ndarray) -> np.ndarray:
        self.predict_calls.append((history.n_buckets, np.array(origins)))
        last = history.qty[:, origins]  # [N, O]: the origin's own bucket, nothing later
        h = np.arange(1, self.spec.horizons + 1)
        base = last[:, :, None] + 0.5 * h[None, None, :]
        spread = np.array([-1.0, 0.0, 2.0])
        return np.maximum(base[..., None] + spread, 0.0).astype(np.float32)


class Cheater(Spy):
    """Forecasts every origin with the last bucket it is given: fine for the last origin, a look-ahead
    for every earlier one."""

    name = "cheater"

    def predict(self, history: History, origins: np.ndarray) -> np.ndarray:
        out = super().predict(history, np.full(len(origins), history.n_buckets - 1))
        return out


def tiny_history() -> History:
    """Three items, 20 days: one starts late (untracked at the first origin), one has holes."""
    rng = np.random.default_rng(4)
    qty = rng.integers(0, 9, size=(3, 20)).astype(np.float32)
    observed = np.ones((3, 20), dtype=bool)
    observed[1, :15] = False  # first sale on day 15
    observed[2, [13, 14, 18]] = False  # unknown days
    return History(
        item_ids=np.array(["a", "b", "c"]),
        freq="D",
        first_bucket=int(dates_to_buckets(np.array(["2022-03-07"]), "D")[0]),
        qty=np.where(observed, qty, 0.0),
        observed=observed,
        price=np.full((3, 20), np.nan, dtype=np.float32),
    )


CFG = BacktestConfig(quantiles=Q, horizons=3, context_length=5, n_origins=2, spacing=4, leak_check="all")


def test_plan_places_origins_at_the_end():
    h = tiny_history()
    plan = make_plan(h, CFG)
    assert plan.origins.tolist() == [12, 16]  # the last one has all 3 horizons inside 20 days
    assert plan.companions.tolist() == [13, 17]
    assert plan.until == 13
    with pytest.raises(ValueError, match="need more"):
        make_plan(h, BacktestConfig(horizons=3, n_origins=10, spacing=4))


def test_spy_sees_nothing_after_its_origins():
    h = tiny_history()
    spy = Spy(ForecastSpec(horizons=3, quantiles=Q, context_length=5))
    run_backtest(h, [spy], CFG, progress=False)
    assert spy.fit_calls == [(13, 13)]
    for n_buckets, origins in spy.predict_calls:
        assert n_buckets == origins.max() + 1


def test_look_ahead_is_caught():
    h = tiny_history()
    with pytest.raises(LeakageError, match="cheater"):
        run_backtest(
            h, [Cheater(ForecastSpec(horizons=3, quantiles=Q, context_length=5))], CFG, progress=False
        )


def test_metrics_match_hand_computation():
    h = tiny_history()
    spy = Spy(ForecastSpec(horizons=3, quantiles=Q, context_length=5))
    res = run_backtest(h, [spy], CFG, progress=False).rungs[0]

    def forecast(i: int, o: int, k: int) -> list[float]:  # horizon k >= 1
        base = h.qty[i, o] + 0.5 * k
        return [max(base - 1, 0.0), base, base + 2]

    def scored(i: int, o: int, col: int) -> bool:
        first = int(np.argmax(h.observed[i]))
        return bool(h.observed[i, col]) and first <= o

    loss = np.zeros(3)
    below, at_or_below = np.zeros(3), np.zeros(3)
    total, inside, cells = 0.0, 0, 0
    for o in (12, 16):
        for i in range(3):
            for k in (1, 2, 3):
                if not scored(i, o, o + k):
                    continue
                y = float(h.qty[i, o + k])
                p = forecast(i, o, k)
                for j, q in enumerate(Q):
                    loss[j] += max(q * (y - p[j]), (q - 1) * (y - p[j]))
                total += abs(y)
                below += y < np.asarray(p)
                at_or_below += y <= np.asarray(p)
                inside += p[0] <= y <= p[2]
                cells += 1
    want = 2 * loss / total
    np.testing.assert_allclose(res.wql_per_quantile, want, rtol=1e-6)  # forecasts are float32
    assert res.wql == pytest.approx(want.mean())
    assert res.coverage == pytest.approx(inside / cells)
    np.testing.assert_allclose(res.below, below / cells)
    np.testing.assert_allclose(res.at_or_below, at_or_below / cells)

    changes = []
    for o in (12, 16):
        for i in range(3):
            for k in (1, 2):  # companion origin o+1 at horizon k vs origin o at horizon k+1
                col = o + 1 + k
                if scored(i, o + 1, col) and int(np.argmax(h.observed[i])) <= o:
                    changes.append(abs(forecast(i, o + 1, k)[1] - forecast(i, o, k + 1)[1]))
    assert res.volatility == pytest.approx(np.mean(changes) / (total / cells))


def test_invalid_forecasts_are_rejected():
    h = tiny_history()

    class Crossing(Spy):
        name = "crossing"

        def predict(self, history, origins):
            return super().predict(history, origins)[..., ::-1].copy()

    class Missing(Spy):
        name = "missing"

        def predict(self, history, origins):
            out = super().predict(history, origins)
            out[2] = np.nan  # an item that is tracked and scored
            return out

    spec = ForecastSpec(horizons=3, quantiles=Q, context_length=5)
    with pytest.raises(ModelError, match="cross"):
        run_backtest(h, [Crossing(spec)], CFG, progress=False)
    with pytest.raises(ModelError, match="scored"):
        run_backtest(h, [Missing(spec)], CFG, progress=False)
    with pytest.raises(ValueError, match="horizons"):
        run_backtest(h, [Spy(ForecastSpec(horizons=4, quantiles=Q))], CFG, progress=False)


def test_baselines_through_the_backtest_and_outputs(tmp_path):
    h = seasonal_history(late_first=None, price=None)
    cfg = BacktestConfig(quantiles=Q, horizons=7, context_length=28, n_origins=3, spacing=7)
    result = run_backtest(h, build_forecasters(["naive", "ets"], h, cfg), cfg, progress=False)
    naive, ets = result.rungs
    assert 0 < ets.wql < naive.wql  # noisy seasonal data: smoothing beats repeating last week
    paths = result.save(tmp_path)
    names = {p.name for p in paths}
    assert {"backtest.csv", "backtest.md", "backtest.json", "wql_by_rung.png", "fans.png"} <= names
    rows = list(csv.DictReader((tmp_path / "backtest.csv").open()))
    assert [r["rung"] for r in rows] == ["naive", "ets"]
    assert float(rows[1]["wql"]) == pytest.approx(ets.wql)
    summary = json.loads((tmp_path / "backtest.json").read_text())
    assert len(summary["wql_by_horizon"]["ets"]) == 7
    assert "| ets |" in (tmp_path / "backtest.md").read_text()
    # The hindsight references beside the rungs, the finer one never behind the coarser.
    item, window = summary["hindsight"]
    assert [item["reference"], window["reference"]] == ["hindsight-item", "hindsight-item-window"]
    assert 0 < window["wql"] <= item["wql"]
    assert "| hindsight-item-window |" in (tmp_path / "backtest.md").read_text()


def _small_mqcnn_backtest(rungs: list[str], **config: object):
    """The MQ-CNN ``rungs`` fitted for 2 s each and scored at 2 origins, every one leak-checked."""
    from state.feedback import feedback_steps

    h = seasonal_history(n_items=12, n_days=100, late_first=None, price=None)
    cfg = BacktestConfig(
        quantiles=Q, horizons=7, n_origins=2, spacing=7, max_seconds_per_rung=2.0, leak_check="all", **config
    )
    forecasters = build_forecasters(rungs, h, cfg, feedback_steps)
    return forecasters, run_backtest(h, forecasters, cfg, progress=False)


def test_mqcnn_rungs_run_and_are_causal():
    forecasters, result = _small_mqcnn_backtest(["mqcnn", "mqcnn-feedback"], ema_decay=0.9)
    assert [r.name for r in result.rungs] == ["mqcnn", "mqcnn-feedback"]
    assert all(np.isfinite(r.wql) for r in result.rungs)
    assert all(f.report["config"]["ema_decay"] == 0.9 for f in forecasters)  # the flag reached training


def test_feedback_rung_reading_its_previous_forecasts_runs_causally():
    forecasters, result = _small_mqcnn_backtest(["mqcnn-feedback"], feedback_previous=True)
    (rung,) = forecasters
    assert rung.args.feedback_previous and rung.args.n_feedback > 6
    assert np.isfinite(result.rungs[0].wql)


def _write_history_csv(h: History, path) -> None:
    days = (h.first_bucket + np.arange(h.n_buckets)).astype("datetime64[D]")
    with gzip.open(path, "wt") as fh:
        fh.write("item_id,date,qty\n")
        for i, item in enumerate(h.item_ids):
            for t in np.flatnonzero(h.observed[i]):
                fh.write(f"{item},{days[t]},{h.qty[i, t]:g}\n")


def test_command_line(tmp_path, capsys):
    data = tmp_path / "h.csv.gz"
    _write_history_csv(seasonal_history(late_first=None, price=None), data)
    parser = argparse.ArgumentParser()
    add_backtest_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "--data",
            str(data),
            "--out-dir",
            str(out),
            "--rungs",
            "naive,ets",
            "--origins",
            "2",
            "--no-progress",
        ]
    )
    assert run_backtest_command(args) == 0
    assert "| naive |" in capsys.readouterr().out
    assert (out / "backtest.csv").exists() and (out / "wql_by_horizon.png").exists()

    bad = parser.parse_args(["--data", str(data), "--rungs", "naive,arima", "--no-progress"])
    assert run_backtest_command(bad) == 2
    assert "arima" in capsys.readouterr().err
    needs_replay = parser.parse_args(["--data", str(data), "--rungs", "mqcnn-feedback", "--no-progress"])
    assert run_backtest_command(needs_replay) == 2


def test_the_command_line_names_every_rung_in_ladder_order():
    assert tuple(RUNGS) == LADDER


def test_the_backtest_gives_each_network_the_budget_mqcast_train_gives_it():
    parser = argparse.ArgumentParser()
    add_backtest_arguments(parser)
    assert parser.parse_args(["--data", "x.csv"]).max_minutes_per_rung == TrainConfig().max_minutes


def test_calibration_row_marks_a_level_outside_its_shares_beyond_the_tolerance():
    r = RungResult(
        name="x",
        wql=0.5,
        wql_per_quantile=[0.1, 0.2, 0.3],
        wql_by_horizon=[0.5],
        coverage=0.9,
        volatility=0.1,
        train_seconds=1.0,
        predict_seconds=1.0,
        forecasts=np.zeros((1, 1, 1, 3), dtype=np.float32),
        below=[0.0, 0.46, 0.93],  # a P10 of 0 on many zeros; a P90 a little high
        at_or_below=[0.74, 0.46, 0.96],
    )
    row = r.calibration_row((0.1, 0.5, 0.9))
    assert row == {"rung": "x", "p10": "0.000-0.740", "p50": "0.460-0.460 (off)", "p90": "0.930-0.960 (off)"}
    assert r.row((0.1, 0.5, 0.9))["at_or_below_p10"] == 0.74
    r.below, r.at_or_below = [0.08, 0.48, 0.92], [0.08, 0.48, 0.92]
    assert "(off)" not in "".join(r.calibration_row((0.1, 0.5, 0.9)).values())


def test_an_ensemble_of_mqcnns_runs_as_a_rung_and_stays_causal():
    from model.network import MQCNNEnsemble

    forecasters, result = _small_mqcnn_backtest(["mqcnn-feedback"], ensemble=2)
    assert np.isfinite(result.rungs[0].wql)
    assert isinstance(forecasters[0].model, MQCNNEnsemble) and len(forecasters[0].report["members"]) == 2


class Tiny(Spy):
    """Forecasts ``low`` / 1 / 5 everywhere: a lowest quantile that is zero or not once published."""

    name = "tiny"
    low = 0.0004

    def predict(self, history: History, origins: np.ndarray) -> np.ndarray:
        shape = (history.n_items, len(origins), self.spec.horizons, 3)
        return np.broadcast_to(np.array([self.low, 1.0, 5.0], dtype=np.float32), shape).copy()


@pytest.mark.parametrize(("low", "published"), [(0.0004, 0.0), (0.0006, 0.001)])
def test_forecasts_are_scored_as_published_rounded_to_thousandths(low, published):
    h = tiny_history()
    h.qty[:] = np.where(np.arange(20) % 2 == 0, 0.0, 3.0)  # every other day sells nothing
    forecaster = Tiny(ForecastSpec(horizons=3, quantiles=Q, context_length=5))
    forecaster.low = low
    res = run_backtest(h, [forecaster], CFG, progress=False)
    rung = res.rungs[0]
    zero = res.actuals == 0
    assert zero.any() and (res.actuals == 3).any()
    # A zero is inside [P10, P90] exactly when P10 is published as 0.0.
    want_inside = np.where(zero, published == 0.0, True)[np.isfinite(res.actuals)]
    assert rung.coverage == pytest.approx(want_inside.mean())
    np.testing.assert_array_equal(np.unique(rung.forecasts[..., 0]), [published])
