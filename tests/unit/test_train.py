"""Training with forking sequences on a small synthetic history."""

from __future__ import annotations

import numpy as np
import torch

from model.metrics import weighted_quantile_loss
from model.network import ModelArgs
from model.train import TrainConfig, build_tensors, forecast_all, train
from state.feedback import replay_feedback

ARGS = ModelArgs(context_length=28, horizons=7, dilations=(1, 2, 4, 8), channels=16, global_hidden=64)
CFG = TrainConfig(epochs=6, batch_size=8, lr=5e-3, threads=1, max_minutes=1.0, feedback_stages=0)


def test_trained_model_beats_a_constant_forecast(make_history):
    h = make_history(n_items=24, n_days=100)
    model, report = train(h, ARGS, CFG, progress=False)
    tt = build_tensors(h, ARGS)
    pred = forecast_all(
        model, tt, np.zeros((tt.n_items, tt.n_steps, ARGS.n_feedback), np.float32), torch.device("cpu")
    )
    ok = tt.mask > 0
    ok[:, : ARGS.context_length] = False
    y = tt.ahead[ok]
    _, ours = weighted_quantile_loss(y, pred[ok], np.array(ARGS.quantiles))
    # Per-item constant: the item's mean demand at every quantile.
    level = np.broadcast_to(h.qty.mean(axis=1)[:, None, None], tt.ahead.shape)[ok]
    _, flat = weighted_quantile_loss(y, np.repeat(level[:, None], 3, axis=1), np.array(ARGS.quantiles))
    assert ours < flat
    assert report["epochs_run"] == CFG.epochs and np.isfinite(report["val_wql"])


def test_training_is_deterministic_with_a_seed(make_history):
    h = make_history(n_items=12, n_days=60)
    cfg = TrainConfig(epochs=2, batch_size=6, threads=1, feedback_stages=0)
    a, _ = train(h, ARGS, cfg, progress=False)
    b, _ = train(h, ARGS, cfg, progress=False)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_feedback_stage_receives_features_of_the_models_own_forecasts(make_history):
    h = make_history(n_items=12, n_days=60)
    seen: list[np.ndarray] = []

    def feedback_fn(forecasts, qty, observed):
        assert np.isnan(forecasts[~(np.arange(qty.shape[1])[None] >= observed.argmax(axis=1)[:, None])]).all()
        fb = replay_feedback(forecasts, qty, observed, ARGS.context_length, ARGS.quantiles)
        seen.append(fb)
        return fb

    cfg = TrainConfig(epochs=3, batch_size=6, threads=1, feedback_stages=1)
    _, report = train(h, ARGS, cfg, feedback_fn=feedback_fn, progress=False)
    assert len(seen) == 1 and report["stages"] == 1
    fb = seen[0]
    assert fb.shape == (12, 60, ARGS.n_feedback)
    assert fb[:, -1, 0].min() > 0.9  # every item has many realised forecasts by the end
    assert np.abs(fb[:, :, 1:]).sum() > 0
