"""The forecast ledger: each item's recent forecasts, scored when their targets close.

A forecast made at origin ``o`` covers buckets ``o+1..o+H``, so only the last ``H`` origins can still
be realised. The ledger keeps them in a ring of ``H`` origin slots per item and turns the realised
errors into the feedback features of ``state.feedback`` (with ``previous``, also each horizon's
previous forecast of its target, read from the ring).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from state.arrays import grown
from state.feedback import (
    n_error_features,
    n_feedback_features,
    previous_forecasts,
    realised_errors,
    update_feedback,
)

_NO_ORIGIN = np.iinfo(np.int64).min


#: Forecasts are published rounded to this many decimals (the README's message contract) and scored
#: that way. The same as ``model.metrics.PUBLISHED_DECIMALS``: state does not import model, and a
#: unit test keeps them equal.
PUBLISHED_DECIMALS = 3


@dataclass
class RealisedScore:
    """Raw-unit accuracy of the forecasts realised at one bucket, summed over items and horizons."""

    pinball_sum: np.ndarray  # float64 [Q]
    abs_actual_sum: float
    interval_hits: int
    n_scored: int  # (item, horizon) pairs scored


class Ledger:
    """Per-item forecasts of the last ``H`` origins and the feedback features they produced."""

    def __init__(
        self,
        capacity: int,
        horizons: int,
        quantiles: tuple[float, ...],
        alpha: float,
        window: int = 0,
        previous: bool = False,
    ) -> None:
        self.horizons = horizons
        self.quantiles = np.asarray(quantiles, dtype=np.float32)
        self.alpha = alpha
        self.previous = previous
        q = len(quantiles)
        self.forecasts = np.full((capacity, horizons, horizons, q), np.nan, dtype=np.float32)
        self.origin = np.full((capacity, horizons), _NO_ORIGIN, dtype=np.int64)
        #: Columns of ``feedback`` that accumulate realised errors; the rest (the previous
        #: forecasts) is rebuilt from ``forecasts`` at every bucket, so it is not state of its own.
        self.n_errors = n_error_features(q, window)
        width = n_feedback_features(q, window, horizons if previous else 0)
        self.feedback = np.zeros((capacity, width), dtype=np.float32)

    @property
    def capacity(self) -> int:
        return int(self.origin.shape[0])

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` items, keeping what is stored."""
        old = self.capacity
        if capacity <= old:
            return
        self.forecasts = grown(self.forecasts, capacity, np.nan)
        self.origin = grown(self.origin, capacity, _NO_ORIGIN)
        self.feedback = grown(self.feedback, capacity, 0.0)

    def compact(self, keep: np.ndarray, n: int) -> None:
        """Keep rows ``keep`` of the first ``n`` (moved to the front), clearing the rest."""
        m = keep.size
        self.forecasts[:m] = self.forecasts[keep]
        self.forecasts[m:n] = np.nan
        self.origin[:m] = self.origin[keep]
        self.origin[m:n] = _NO_ORIGIN
        self.feedback[:m] = self.feedback[keep]
        self.feedback[m:n] = 0.0

    def record(self, origin: int, rows: np.ndarray, values: np.ndarray) -> None:
        """Store the forecasts ``values`` [n, H, Q] made at ``origin`` for item ``rows``."""
        slot = origin % self.horizons
        self.forecasts[rows, slot] = values
        self.origin[rows, slot] = origin

    def realised_at(self, bucket: int, n: int) -> np.ndarray:
        """Forecasts of the first ``n`` items that targeted ``bucket``, float32 [n, H, Q] (NaN: none)."""
        out = np.full((n, self.horizons, self.forecasts.shape[3]), np.nan, dtype=np.float32)
        for h in range(1, self.horizons + 1):
            o = bucket - h
            slot = o % self.horizons
            valid = self.origin[:n, slot] == o
            out[valid, h - 1] = self.forecasts[:n, slot, h - 1][valid]
        return out

    def realise(
        self, bucket: int, actual: np.ndarray, scale: np.ndarray, tracked: np.ndarray
    ) -> RealisedScore:
        """Score every forecast that targeted ``bucket`` and fold the errors into the feedback.

        ``actual`` and ``scale`` cover the first ``n`` items; ``tracked`` marks those that existed at
        the bucket (an item first seen later has nothing to be scored against).
        """
        n = actual.shape[0]
        realised = self.realised_at(bucket, n)
        realised[~tracked] = np.nan
        errors, has = realised_errors(realised, actual, scale, self.quantiles)
        e = self.n_errors
        self.feedback[:n, :e] = update_feedback(self.feedback[:n, :e], errors, has, self.alpha)
        self.refresh_previous(bucket, n)
        return _score(realised, actual, self.quantiles)

    def refresh_previous(self, bucket: int, n: int) -> None:
        """Set the previous-forecast block of the first ``n`` items' feedback as it stands once
        ``bucket`` has closed: the forecasts made at ``bucket - 1`` (nothing without ``previous``)."""
        if self.previous:
            self.feedback[:n, self.n_errors :] = previous_forecasts(self.made_at(bucket - 1, n))

    def made_at(self, origin: int, n: int) -> np.ndarray:
        """The forecasts the first ``n`` items received at ``origin``, float32 [n, H, Q] (NaN: none)."""
        slot = origin % self.horizons
        made = self.origin[:n, slot] == origin
        return np.where(made[:, None, None], self.forecasts[:n, slot], np.nan).astype(np.float32)


def _score(realised: np.ndarray, actual: np.ndarray, quantiles: np.ndarray) -> RealisedScore:
    valid = np.isfinite(realised[:, :, 0])
    if not valid.any():
        return RealisedScore(np.zeros(quantiles.size), 0.0, 0, 0)
    # Scored as published (rounded to thousandths), as the backtest scores them: a P10 of 0.0002 on
    # a day without sales is published as 0.0, which covers the zero. The feedback above reads the
    # unrounded forecasts, as training does.
    pred = np.round(realised[valid].astype(np.float64), PUBLISHED_DECIMALS)  # [k, Q]
    y = np.broadcast_to(actual[:, None], valid.shape)[valid].astype(np.float64)
    diff = y[:, None] - pred
    pin = np.maximum(quantiles * diff, (quantiles - 1.0) * diff).sum(axis=0)
    hits = int(((y >= pred[:, 0]) & (y <= pred[:, -1])).sum())
    return RealisedScore(pin.astype(np.float64), float(np.abs(y).sum()), hits, int(valid.sum()))
