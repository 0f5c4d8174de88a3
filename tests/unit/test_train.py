"""Training tensors and forking-sequence training on a small synthetic history."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from histories import daily_history

from model.dataset import build_tensors
from model.features import calendar_features
from model.history import History, bucket_start_ms
from model.metrics import weighted_quantile_loss
from model.network import MQCNN, ModelArgs, MQCNNEnsemble, WindowMLP
from model.train import (
    TrainConfig,
    _split_cells,
    feedback_error_gap,
    forecast_all,
    forecast_recurrent,
    held_out_forecasts,
    train,
)
from state.feedback import feedback_steps, replay_feedback

ARGS = ModelArgs(
    context_length=28, horizons=7, dilations=(1, 2, 4, 8), channels=16, global_hidden=32, horizon_context=8
)
CFG = TrainConfig(epochs=8, batch_size=8, lr=1e-2, threads=1, max_minutes=1.0, feedback_stages=0)


def weekly_history(n_items: int = 40, n_days: int = 98, seed: int = 0) -> History:
    """Daily demand with a strong weekly pattern, volumes two orders of magnitude apart, late starts
    and a few unobserved days."""
    rng = np.random.default_rng(seed)
    level = rng.choice([0.5, 4.0, 40.0], n_items)
    dow = np.array([0.2, 1.0, 1.0, 1.2, 1.6, 2.4, 0.6])  # daily_history starts on a Monday
    qty = rng.poisson(level[:, None] * dow[np.arange(n_days) % 7][None, :]).astype(np.float32)
    first = rng.integers(0, 21, n_items)
    observed = np.arange(n_days)[None, :] >= first[:, None]
    observed &= rng.random((n_items, n_days)) > 0.02
    price = np.where(observed, rng.uniform(1, 5, n_items)[:, None], np.nan).astype(np.float32)
    return daily_history(qty, observed, price)


@pytest.fixture(scope="module")
def history() -> History:
    return weekly_history()


@pytest.fixture(scope="module")
def trained(history):
    return train(history, ARGS, CFG, progress=False)


def _zeros_fb(tt) -> np.ndarray:
    return np.zeros((tt.n_items, tt.n_steps, ARGS.n_feedback), np.float32)


def test_tensors_line_up_targets_masks_and_calendar(history):
    args = dataclasses.replace(ARGS, n_static=1)
    tt = build_tensors(history, args)
    n, t, h = history.n_items, history.n_buckets, args.horizons
    assert tt.past_cov.shape == (n, t, args.n_past_cov) and tt.static.shape == (n, 1)
    assert tt.future_cov.shape == (n, t, h, args.n_future_cov) and tt.mask.shape == (n, t, h)
    i = 5
    for origin, step in ((30, 0), (40, 6), (t - 2, 0)):
        col = origin + 1 + step
        assert tt.ahead[i, origin, step] == history.qty[i, col]
        assert tt.mask[i, origin, step] == float(history.observed[i, col] and origin >= tt.first[i])
    # Targets past the end of the data are masked; their calendar is extended, not clamped.
    assert tt.mask[:, -1].sum() == 0 and tt.mask[:, t - 3, 2:].sum() == 0
    beyond = bucket_start_ms(np.array([history.first_bucket + t + 3]), "D")
    np.testing.assert_allclose(tt.future_cov[0, t - 1, 3], calendar_features(beyond)[0])
    # No loss before an item is first seen, even if a later bucket was observed.
    late = int(np.argmax(tt.first))
    assert tt.first[late] > 0 and tt.mask[late, : tt.first[late]].sum() == 0
    assert tt.past_cov[0, :, -1].min() >= 0  # log price, 0 before the first known price
    np.testing.assert_array_equal(tt.static[:3, 0] > 0, True)
    assert tt.static[0, 0] == tt.static[3, 0] != tt.static[1, 0]  # stores s0, s0, s1
    with pytest.raises(ValueError, match="static columns"):
        build_tensors(history, dataclasses.replace(ARGS, n_static=2))


def test_trained_model_beats_constant_quantiles(history, trained):
    model, report = trained
    tt = build_tensors(history, ARGS)
    pred = forecast_all(model, tt, _zeros_fb(tt))
    v = report["validation_buckets"]
    assert v == ARGS.horizons
    # Score the validation cells: targets in the last v buckets, forecast before them.
    ok = tt.mask > 0
    ok[:, history.n_buckets - v :] = False
    target_col = np.arange(history.n_buckets)[:, None] + 1 + np.arange(ARGS.horizons)[None, :]
    ok &= (target_col >= history.n_buckets - v)[None]
    y = tt.ahead[ok]
    q = np.array(ARGS.quantiles)
    _, ours = weighted_quantile_loss(y, pred[ok], q)
    assert ours == pytest.approx(report["val_wql"], rel=1e-5)
    # The best constant forecast per item: its empirical quantiles over the training buckets.
    train_part = np.where(history.observed, history.qty, np.nan)[:, : history.n_buckets - v]
    flat = np.nanquantile(train_part, q, axis=1).T  # [N, Q]
    const = np.broadcast_to(flat[:, None, None, :], pred.shape)[ok]
    _, baseline = weighted_quantile_loss(y, const, q)
    assert ours < 0.85 * baseline, (ours, baseline)
    assert report["epochs_run"] == CFG.epochs and report["stages"] == 0
    assert report["n_params"] == sum(p.numel() for p in model.parameters())
    assert report["train_loss"] > 0 and np.isfinite(report["val_loss"])


def test_forecasts_from_a_late_origin_equal_the_full_pass(history, trained):
    model, _ = trained
    tt = build_tensors(history, ARGS)
    full = forecast_all(model, tt, _zeros_fb(tt), batch=16)
    late = forecast_all(model, tt, _zeros_fb(tt), since=60)
    np.testing.assert_allclose(late, full[:, 60:], rtol=1e-5, atol=1e-5)
    untracked = np.arange(history.n_buckets)[None, :] < tt.first[:, None]
    assert np.isnan(full[untracked]).all() and np.isfinite(full[~untracked]).all()


def test_training_is_deterministic_with_a_seed(history):
    small = weekly_history(n_items=12, n_days=60)
    cfg = dataclasses.replace(CFG, epochs=2, batch_size=6)
    a, ra = train(small, ARGS, cfg, progress=False)
    b, rb = train(small, ARGS, cfg, progress=False)
    c, _ = train(small, ARGS, dataclasses.replace(cfg, seed=1), progress=False)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert ra["val_wql"] == rb["val_wql"]
    assert any(
        not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_feedback_stage_trains_on_features_of_the_models_own_forecasts():
    h = weekly_history(n_items=16, n_days=70)
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def feedback_fn(forecasts, qty, observed):
        fb = replay_feedback(forecasts, qty, observed, ARGS.context_length, ARGS.quantiles)
        calls.append((forecasts, fb))
        return fb

    cfg = dataclasses.replace(CFG, epochs=3, feedback_stages=1)
    model, report = train(h, ARGS, cfg, feedback_fn=feedback_fn, progress=False)
    assert len(calls) == 1 and report["stages"] == 1 and report["chosen"]["stage"] == 1
    forecasts, fb = calls[0]
    tt = build_tensors(h, ARGS)
    assert forecasts.shape == (16, 70, ARGS.horizons, len(ARGS.quantiles))
    untracked = np.arange(70)[None, :] < tt.first[:, None]
    assert np.isnan(forecasts[untracked]).all() and np.isfinite(forecasts[~untracked]).all()
    assert fb.shape == (16, 70, ARGS.n_feedback) and fb[:, -1, 0].min() > 0.9
    # The trained network reads the features: zeroing them changes its forecasts.
    with_fb = forecast_all(model, tt, fb)
    without = forecast_all(model, tt, np.zeros_like(fb))
    assert np.nanmax(np.abs(with_fb - without)) > 1e-3
    # The report compares those forecasts' errors on fitted and on held-out targets.
    train_cells, val_cells = _split_cells(tt, ARGS.horizons)
    gap = feedback_error_gap(forecasts, tt, train_cells, val_cells, ARGS.horizons, ARGS.quantiles)
    assert report["feedback_error_gap"] == gap and min(gap.values()) > 0


def test_recurrent_forecasts_equal_serving_origin_by_origin_on_the_models_own_feedback():
    """Each origin's forecast is made with the features the ledger replay builds from the model's
    own earlier forecasts (previous forecasts and realised errors), as the service would."""
    h = weekly_history(n_items=9, n_days=60)
    args = dataclasses.replace(ARGS, feedback_window=2, feedback_previous=True, window_member=16)
    torch.manual_seed(0)
    model = MQCNNEnsemble([MQCNN(args), MQCNN(args), WindowMLP.from_args(args)]).eval()
    tt = build_tensors(h, args)

    ledger = (args.context_length, args.quantiles, 2)

    def feedback_fn(forecasts, qty, observed):
        return replay_feedback(forecasts, qty, observed, *ledger, previous=True)

    def steps(forecasts, qty, observed):
        return feedback_steps(forecasts, qty, observed, *ledger, previous=True)

    since = 35
    got = forecast_recurrent(model, tt, steps, since=since, batch=4)
    full = np.full((tt.n_items, tt.n_steps, args.horizons, len(args.quantiles)), np.nan, np.float32)
    for t in range(since, tt.n_steps):
        fb = feedback_fn(full, tt.target, tt.observed > 0)  # features at t see forecasts before t
        full[:, t] = forecast_all(model, tt, fb, since=t)[:, 0]
    np.testing.assert_allclose(got, full[:, since:], rtol=1e-5, atol=1e-5)
    plain = forecast_all(model, tt, np.zeros_like(fb), since=since)
    assert np.nanmax(np.abs(plain - got)) > 1e-4


def test_feedback_error_gap_scores_recent_fitted_targets_against_held_out_ones():
    h = weekly_history(n_items=6, n_days=60)
    tt = build_tensors(h, ARGS)
    v = 7
    train_cells, val_cells = _split_cells(tt, v)
    exact = np.repeat(tt.ahead[..., None], len(ARGS.quantiles), axis=-1)
    gap = feedback_error_gap(exact, tt, train_cells, val_cells, v, ARGS.quantiles)
    assert gap == {"in_sample_wql": 0.0, "held_out_wql": 0.0}
    # Wrong only where the targets lie in the validation window: only the held-out score moves.
    target_col = np.arange(60)[:, None] + 1 + np.arange(ARGS.horizons)[None, :]
    off = np.where((target_col >= 60 - v)[None, :, :, None], exact + 5.0, exact)
    gap = feedback_error_gap(off, tt, train_cells, val_cells, v, ARGS.quantiles)
    assert gap["in_sample_wql"] == 0.0 and gap["held_out_wql"] > 0.1


def test_no_feedback_stage_without_a_feedback_function_or_with_feedback_off(history):
    small = weekly_history(n_items=8, n_days=50)
    cfg = dataclasses.replace(CFG, epochs=1, feedback_stages=2)
    _, report = train(small, ARGS, cfg, progress=False)
    assert report["stages"] == 0

    def never(*_):
        raise AssertionError("feedback_fn must not be called when the network ignores feedback")

    _, report = train(
        small, dataclasses.replace(ARGS, use_feedback=False), cfg, feedback_fn=never, progress=False
    )
    assert report["stages"] == 0


def test_training_resumes_from_a_given_network(history, trained):
    cfg = dataclasses.replace(CFG, epochs=1, lr=1e-4)
    _, fresh = train(history, ARGS, cfg, progress=False)
    _, resumed = train(history, ARGS, cfg, progress=False, model=copy.deepcopy(trained[0]))
    assert resumed["val_wql"] < fresh["val_wql"]


def test_time_budget_stops_training_mid_epoch(history):
    cfg = dataclasses.replace(CFG, epochs=50, batch_size=4, max_minutes=1e-5)
    _, report = train(history, ARGS, cfg, progress=False)
    assert report["epochs_run"] == 1 and report["log"][0]["items_seen"] < history.n_items
    assert np.isfinite(report["val_wql"])


def test_config_is_checked():
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainConfig(loss_weighting="log")
    with pytest.raises(ValueError, match="feedback_share"):
        TrainConfig(feedback_share=1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


@pytest.mark.parametrize("ema_decay", [0.0, 0.99])
def test_the_weights_returned_are_the_ones_whose_validation_score_is_reported(history, ema_decay):
    cfg = dataclasses.replace(CFG, epochs=3, calibrate=False, ema_decay=ema_decay)
    model, report = train(history, ARGS, cfg, progress=False)
    pred, y = held_out_forecasts(model, history, ARGS, report["validation_buckets"])
    wql = weighted_quantile_loss(y, pred, np.asarray(ARGS.quantiles))[1]
    assert wql == pytest.approx(report["val_wql"], rel=1e-5)


def test_calibration_sets_the_shifts_it_reports_and_scores_the_model_it_returns(history):
    cfg = dataclasses.replace(CFG, epochs=2, calibrate=True)
    model, report = train(history, ARGS, cfg, progress=False)
    cal = report["calibration"]
    assert len(cal["shifts"]) == len(ARGS.quantiles)
    np.testing.assert_allclose(model.quantile_shift.numpy(), cal["shifts"], atol=1e-4)
    # Fitted on the validation cells, the shifts can only lower the loss there.
    assert cal["val_wql_after"] <= cal["val_wql_before"] + 1e-6
    assert report["val_wql"] == pytest.approx(cal["val_wql_after"])
    assert cal["shifts"][ARGS.quantiles.index(0.5)] == 0.0  # the spread is calibrated, not the level
    # Off, nothing is shifted.
    plain_model, plain = train(
        history, ARGS, dataclasses.replace(CFG, epochs=2, calibrate=False), progress=False
    )
    assert plain["calibration"] == {} and not plain_model.quantile_shift.any()
