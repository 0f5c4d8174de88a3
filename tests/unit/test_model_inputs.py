"""The network's seasonal-lag input, its covariate masks, and the training options around them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.export import load_checkpoint, save_checkpoint
from model.features import CALENDAR_FEATURES
from model.history import History
from model.network import MQCNN, ModelArgs, default_args_for
from model.train import DAY_OF_YEAR, TrainConfig, covers_a_year


def _inputs(args: ModelArgs, b: int, t: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    observed = (torch.rand(b, t, generator=g) > 0.1).float()
    target = torch.poisson(torch.rand(b, t, generator=g) * 20) * observed
    past = torch.randn(b, t, args.n_past_cov, generator=g)
    fut = torch.randn(b, t, args.horizons, args.n_future_cov, generator=g)
    static = torch.randint(0, args.static_vocab, (b, args.n_static), generator=g)
    fb = torch.randn(b, t, args.n_feedback, generator=g)
    return target, observed, past, fut, static, fb


@pytest.mark.parametrize("freq,season", [("D", 7), ("W", 52), ("M", 12)])
def test_seasonal_input_is_the_demand_one_cycle_before_each_target(freq, season):
    args = dataclasses.replace(default_args_for(freq), season=season)
    assert default_args_for(freq).season == 0  # opt-in
    model = MQCNN(args).eval()
    target, observed, *_ = _inputs(args, 2, args.context_length + 10)
    lags = model.seasonal_inputs(target, observed)  # [B, T, H, 2]
    m = args.season
    for t in range(m, target.shape[1]):
        for h in range(1, args.horizons + 1):
            col = t + h - m * int(np.ceil(h / m))
            assert col <= t and t - col < args.context_length  # known at t, inside the serving window
            torch.testing.assert_close(lags[:, t, h - 1, 0], target[:, col] * observed[:, col])
            torch.testing.assert_close(lags[:, t, h - 1, 1], observed[:, col])


def test_without_a_season_the_network_takes_no_seasonal_input():
    args = ModelArgs(context_length=32, horizons=3, dilations=(1, 2, 4), season=0)
    model = MQCNN(args).eval()
    target, observed, past, fut, static, fb = _inputs(args, 2, 40)
    assert model.seasonal_inputs(target, observed).shape == (2, 40, 3, 0)
    with torch.no_grad():
        out = model(target[:, -32:], observed[:, -32:], past[:, -32:], fut[:, -1], static, fb[:, -1])
    assert out.shape == (2, 3, 3)
    with pytest.raises(ValueError):
        ModelArgs(context_length=32, dilations=(1, 2, 4), season=33)


def test_masked_covariates_are_ignored_and_travel_with_the_weights(tmp_path):
    args = dataclasses.replace(default_args_for("D"), n_static=1)
    torch.manual_seed(0)
    model = MQCNN(args).eval()
    model.mask_covariates(DAY_OF_YEAR)
    assert model.masked_covariates() == list(DAY_OF_YEAR)
    target, observed, past, fut, static, fb = _inputs(args, 3, args.context_length)
    doy = [CALENDAR_FEATURES.index(c) for c in DAY_OF_YEAR]
    past2, fut2 = past.clone(), fut.clone()
    past2[..., doy] += 1.0
    fut2[..., doy] -= 1.0
    with torch.no_grad():
        a = model(target, observed, past, fut[:, -1], static, fb[:, -1])
        b = model(target, observed, past2, fut2[:, -1], static, fb[:, -1])
        torch.testing.assert_close(a, b)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(target, observed, past2, fut2[:, -1], static, fb[:, -1]), a)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, args, path)
    loaded, _, _ = load_checkpoint(path)
    assert loaded.masked_covariates() == list(DAY_OF_YEAR)
    # A checkpoint from before the masks existed loads with every covariate on.
    ckpt = torch.load(path, weights_only=True)
    for name in ("past_cov_mask", "future_cov_mask"):
        del ckpt["state_dict"][name]
    torch.save(ckpt, path)
    assert load_checkpoint(path)[0].masked_covariates() == []


def _history(n_buckets: int, freq: str) -> History:
    first = {"D": 18_000, "W": 2_600}[freq]
    return History(
        item_ids=np.array(["a"]),
        freq=freq,
        first_bucket=first,
        qty=np.ones((1, n_buckets), dtype=np.float32),
        observed=np.ones((1, n_buckets), dtype=bool),
        price=np.full((1, n_buckets), np.nan, dtype=np.float32),
        static={},
    )


def test_a_year_of_history_is_what_turns_the_day_of_year_on():
    assert not covers_a_year(_history(262, "D"))
    assert covers_a_year(_history(365, "D"))
    assert not covers_a_year(_history(52, "W"))
    assert covers_a_year(_history(53, "W"))


def test_train_config_checks_the_new_options():
    with pytest.raises(ValueError):
        TrainConfig(origin_sample=0.0)
    with pytest.raises(ValueError):
        TrainConfig(day_of_year="maybe")
