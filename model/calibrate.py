"""Quantile calibration after training: one shift per quantile, fitted on held-out targets.

A network that fits its training targets well tends to be over-confident on new ones: its outer
quantiles sit too close together. For each quantile level ``tau`` the shift ``d`` that minimises the
pinball loss of ``forecast + d * scale`` over the held-out cells is the scale-weighted ``tau``-quantile
of the residuals ``(y - forecast) / scale``; in demand units that loss is what wQL measures. The
network applies the shifts itself (``MQCNN.quantile_shift``, clipping at zero as demand is), so the
artefact the service loads forecasts exactly what the backtest scored.

Training calibrates the spread, not the level (:func:`interval_shifts`): the median keeps the place
training gave it. Shifting it too moved the forecasts' level to that of the held-out weeks, which
on the Walmart backtest did not carry over to the weeks after them (wQL 4% worse), while the width
of the interval does carry over.
"""

from __future__ import annotations

import numpy as np


def weighted_quantile(values: np.ndarray, weights: np.ndarray, tau: float) -> float:
    """The smallest value whose share of the total weight at or below it reaches ``tau``."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order], dtype=np.float64)
    k = int(np.searchsorted(cum, tau * cum[-1], side="left"))
    return float(values[order][min(k, values.size - 1)])


def quantile_shifts(
    forecasts: np.ndarray, actual: np.ndarray, scale: np.ndarray, quantiles: tuple[float, ...]
) -> np.ndarray:
    """Shift of each quantile, in scale units, that minimises its pinball loss on these cells.

    ``forecasts`` [K, Q] in demand units, ``actual`` [K], ``scale`` [K] (positive). With no cells
    every shift is 0.
    """
    q = len(quantiles)
    if forecasts.shape != (actual.size, q) or scale.shape != actual.shape:
        shapes = f"forecasts {forecasts.shape}, actual {actual.shape}, scale {scale.shape}"
        raise ValueError(f"{shapes} do not match")
    if actual.size == 0:
        return np.zeros(q, dtype=np.float32)
    if not np.all(scale > 0):
        raise ValueError("scales must be positive")
    s = scale.astype(np.float64)
    residual = (actual[:, None].astype(np.float64) - forecasts) / s[:, None]
    return np.array(
        [weighted_quantile(residual[:, j], s, tau) for j, tau in enumerate(quantiles)], dtype=np.float32
    )


def interval_shifts(
    forecasts: np.ndarray, actual: np.ndarray, scale: np.ndarray, quantiles: tuple[float, ...]
) -> np.ndarray:
    """:func:`quantile_shifts` for every level but the median (0.5), whose shift is 0."""
    shifts = quantile_shifts(forecasts, actual, scale, quantiles)
    shifts[np.isclose(np.asarray(quantiles, dtype=np.float64), 0.5)] = 0.0
    return shifts
