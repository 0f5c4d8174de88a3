"""Quantile calibration: the shifts undo a known bias, minimise the pinball loss, and travel with the
network into the TorchScript artefact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.calibrate import interval_shifts, quantile_shifts, weighted_quantile
from model.network import MQCNN, ModelArgs

QUANTILES = (0.1, 0.5, 0.9)


def _pinball(y: np.ndarray, f: np.ndarray, tau: float) -> float:
    d = y - f
    return float(np.maximum(tau * d, (tau - 1.0) * d).sum())


def test_weighted_quantile_counts_weight_not_rows() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0])
    assert weighted_quantile(values, np.ones(4), 0.5) == 2.0
    assert weighted_quantile(values, np.array([1.0, 1.0, 1.0, 7.0]), 0.5) == 4.0


def test_shifts_undo_a_known_bias_in_scale_units() -> None:
    rng = np.random.default_rng(0)
    scale = rng.uniform(1.0, 20.0, 20_000)
    z = rng.normal(0.0, 1.0, scale.size)
    actual = scale * (5.0 + z)
    true_q = np.array([-1.2816, 0.0, 1.2816])
    # A forecaster one scale unit too low at every quantile, and too narrow at the outer ones.
    forecasts = scale[:, None] * (5.0 + 0.5 * true_q[None, :] - 1.0)
    shifts = quantile_shifts(forecasts, actual, scale, QUANTILES)
    np.testing.assert_allclose(shifts, 1.0 + 0.5 * true_q, atol=0.05)
    fixed = forecasts + shifts[None, :] * scale[:, None]
    for j, tau in enumerate(QUANTILES):
        assert _pinball(actual, fixed[:, j], tau) < _pinball(actual, forecasts[:, j], tau)
        # A minimum: moving the shift either way costs more.
        for eps in (-0.05, 0.05):
            assert _pinball(actual, fixed[:, j], tau) <= _pinball(actual, fixed[:, j] + eps * scale, tau)


def test_interval_shifts_leave_the_median_where_it_is() -> None:
    rng = np.random.default_rng(1)
    scale = rng.uniform(1.0, 5.0, 5_000)
    actual = scale * rng.gamma(2.0, 1.0, scale.size)
    forecasts = np.sort(rng.uniform(0.0, 3.0, (scale.size, 5)), axis=1) * scale[:, None]
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    full = quantile_shifts(forecasts, actual, scale, levels)
    spread = interval_shifts(forecasts, actual, scale, levels)
    assert spread[2] == 0.0 and full[2] != 0.0
    np.testing.assert_array_equal(np.delete(spread, 2), np.delete(full, 2))


def test_shifts_refuse_mismatched_shapes_and_bad_scales() -> None:
    assert quantile_shifts(np.zeros((0, 3)), np.zeros(0), np.zeros(0), QUANTILES).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="do not match"):
        quantile_shifts(np.zeros((4, 2)), np.zeros(4), np.ones(4), QUANTILES)
    with pytest.raises(ValueError, match="positive"):
        quantile_shifts(np.zeros((2, 3)), np.zeros(2), np.array([1.0, 0.0]), QUANTILES)


def _inputs(args: ModelArgs, b: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [
        torch.rand(b, args.context_length, generator=g) * 10,
        torch.ones(b, args.context_length),
        torch.rand(b, args.context_length, args.n_past_cov, generator=g),
        torch.rand(b, args.horizons, args.n_future_cov, generator=g),
        torch.zeros(b, args.n_static, dtype=torch.long),
        torch.rand(b, args.n_feedback, generator=g),
    ]


def test_shifts_move_the_served_quantiles_and_keep_them_ordered() -> None:
    torch.manual_seed(0)
    args = ModelArgs()
    net = MQCNN(args).eval()
    x = _inputs(args)
    with torch.no_grad():
        plain = net(*x)
        net.quantile_shift.copy_(torch.tensor([-0.2, 0.1, 3.0]))
        shifted = net(*x)
        net.quantile_shift.copy_(torch.tensor([5.0, 0.0, 0.0]))  # P10 pushed above P50 and P90
        crossed = net(*x)
    scale = 1.0 + (x[0] * x[1]).mean(dim=1)  # observed everywhere: the window mean
    expected = (
        torch.relu(plain / scale[:, None, None] + torch.tensor([-0.2, 0.1, 3.0])) * scale[:, None, None]
    )
    torch.testing.assert_close(shifted, torch.cummax(expected, dim=-1).values, rtol=1e-4, atol=1e-4)
    assert torch.all(crossed[..., 1:] >= crossed[..., :-1])
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(*x), crossed)
    assert "quantile_shift" in net.state_dict()
