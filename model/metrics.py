"""Accuracy metrics over numpy arrays; NaN marks "no value" and quantiles are the last axis."""

from __future__ import annotations

import numpy as np

#: Forecasts are published rounded to this many decimals (thousandths of a unit; the forecast
#: message contract in the README), and scored that way (:func:`as_published`).
PUBLISHED_DECIMALS = 3


def as_published(pred: np.ndarray) -> np.ndarray:
    """``pred`` as the service publishes it: float64, rounded to :data:`PUBLISHED_DECIMALS`
    decimals (half to even). NaN stays NaN."""
    return np.round(np.asarray(pred, dtype=np.float64), PUBLISHED_DECIMALS)


def pinball(y: np.ndarray, pred: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Pinball (quantile) loss of each prediction: ``y`` [...], ``pred`` [..., Q] -> [..., Q]."""
    q = np.asarray(quantiles, dtype=np.float64)
    diff = np.asarray(y, dtype=np.float64)[..., None] - np.asarray(pred, dtype=np.float64)
    return np.maximum(q * diff, (q - 1.0) * diff)


def weighted_quantile_loss(
    y: np.ndarray, pred: np.ndarray, quantiles: np.ndarray
) -> tuple[np.ndarray, float]:
    """wQL per quantile and their mean: ``2 * sum(pinball) / sum(|y|)`` over cells where both exist."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    ok = np.isfinite(y) & np.all(np.isfinite(pred), axis=-1)
    if not ok.any():
        return np.full(len(quantiles), np.nan), float("nan")
    loss = pinball(y[ok], pred[ok], quantiles).sum(axis=0)
    denom = np.abs(y[ok]).sum()
    per_q = 2.0 * loss / denom if denom > 0 else np.full(len(quantiles), np.nan)
    return per_q, float(np.mean(per_q))


def coverage(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Share of actuals inside ``[lo, hi]`` (cells with all three present)."""
    y, lo, hi = (np.asarray(a, dtype=np.float64) for a in (y, lo, hi))
    ok = np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return float("nan")
    return float(((y[ok] >= lo[ok]) & (y[ok] <= hi[ok])).mean())


def quantile_hits(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of actuals strictly below each quantile forecast, and at or below it, [Q] each.

    For demand that takes whole values (many zeros above all), a calibrated ``tau`` forecast need
    not have exactly ``tau`` of the actuals below it: a P10 of 0 is right whenever a tenth or more of
    the demand is 0, and every 0 then sits on it. What calibration asks is that ``tau`` lies between
    the two shares (``below <= tau <= at_or_below``); for continuous demand they coincide. Cells count
    where ``y`` and every quantile are present.
    """
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    ok = np.isfinite(y) & np.all(np.isfinite(pred), axis=-1)
    if not ok.any():
        nan = np.full(pred.shape[-1], np.nan)
        return nan, nan.copy()
    yy, pp = y[ok][:, None], pred[ok]
    return (yy < pp).mean(axis=0), (yy <= pp).mean(axis=0)


def volatility(forecasts: np.ndarray, y: np.ndarray, median_index: int | None = None) -> float:
    """How much successive forecasts of the same target move, relative to the demand level.

    ``forecasts`` is [N, T, H, Q] (origin ``t``, horizon ``h+1`` targets ``t+h+1``). For every target,
    the absolute change of the median between the forecasts from origins ``t`` and ``t+1`` (horizons
    ``h+1`` and ``h``) is averaged over the pairs where both exist, then divided by the mean |y| of
    ``y`` (any shape; NaN ignored). ``median_index`` defaults to the middle quantile column.
    """
    forecasts = np.asarray(forecasts, dtype=np.float64)
    if median_index is None:
        median_index = forecasts.shape[-1] // 2
    med = forecasts[..., median_index]  # [N, T, H]
    if med.shape[1] < 2 or med.shape[2] < 2:
        return float("nan")
    earlier = med[:, :-1, 1:]  # origin t, horizon h+1
    later = med[:, 1:, :-1]  # origin t+1, horizon h: same target
    change = np.abs(later - earlier)
    ok = np.isfinite(change)
    actual = np.abs(np.asarray(y, dtype=np.float64))
    actual = actual[np.isfinite(actual)]
    if not ok.any() or actual.size == 0 or actual.mean() <= 0:
        return float("nan")
    return float(change[ok].mean() / actual.mean())


def quantiles_cross(pred: np.ndarray) -> bool:
    """Whether any forecast's quantiles (last axis) decrease, beyond float32 rounding; NaNs are ignored."""
    with np.errstate(invalid="ignore"):
        return bool(np.any(np.diff(pred, axis=-1) < -1e-5 * (1.0 + np.abs(pred[..., 1:]))))
