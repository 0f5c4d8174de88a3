"""Hindsight references for a backtest: quantiles fitted on the scored actuals themselves.

A hindsight reference sees the very demand it is scored on, so it is not a forecaster and no rung
could be it. It answers a planner's question the rungs cannot: how much of the error is left to
remove once an item's demand distribution is known. ``item`` gives every cell of an item the
quantiles of all its scored actuals (its demand distribution over the scored period, not the day);
``item-window`` gives each origin's window its own (the item's distribution in each window of
``H`` buckets after an origin, its level there included). Both also know the buckets in which no
item sold anything (a shop closed on Saturdays, a holiday): there they forecast 0, as a forecaster
reading the calendar learns to, and their quantiles are fitted on the other buckets' cells. Each
is then the pinball-optimal forecast that is constant over its group's open buckets.

A rung that beats a reference knows more than that reference about when within its groups the
demand falls; a target below ``item-window`` asks for more than knowing each item's demand
distribution in every scored window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.metrics import coverage, weighted_quantile_loss

#: The references, finest last: the cells that share one forecast.
GROUPS = {"item": "each item's scored cells", "item-window": "each item's cells of one origin's window"}


def closed_buckets(actuals: np.ndarray) -> np.ndarray:
    """[O, H]: the scored buckets in which no item sold anything (every scored actual zero)."""
    y = np.asarray(actuals, dtype=np.float64)
    scored = np.isfinite(y)
    return scored.any(axis=0) & ~(np.where(scored, y, 0.0) != 0).any(axis=0)


def hindsight_forecasts(actuals: np.ndarray, quantiles: Sequence[float], group: str) -> np.ndarray:
    """Quantiles [N, O, H, Q] for actuals [N, O, H] (NaN: not scored): in a closed bucket
    (:func:`closed_buckets`) 0, elsewhere each group's empirical quantiles of its scored actuals in
    open buckets (the smallest value whose share at or below reaches the level), the same at every
    such cell of the group; NaN for a group without scored cells in open buckets."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
    closed = closed_buckets(actuals)
    y = np.where(closed[None], np.nan, np.asarray(actuals, dtype=np.float64))
    n, o, h = y.shape
    rows = y.reshape(n, o * h) if group == "item" else y.reshape(n * o, h)
    scored = np.isfinite(rows)
    counts = scored.sum(axis=1)
    # Sorting puts the NaNs last, so the k-th smallest scored value is column k of the sorted rows.
    ordered = np.sort(rows, axis=1)
    levels = np.asarray(quantiles, dtype=np.float64)
    # inverted_cdf: the ceil(q * count)-th smallest value, which minimises the pinball loss at q.
    k = np.clip(np.ceil(levels[None, :] * counts[:, None]).astype(np.int64) - 1, 0, None)
    k = np.minimum(k, np.maximum(counts - 1, 0)[:, None])
    out = np.take_along_axis(ordered, k, axis=1)  # [rows, Q]
    out[counts == 0] = np.nan
    if group == "item":
        full = np.broadcast_to(out[:, None, None, :], (n, o, h, levels.size))
    else:
        full = np.broadcast_to(out.reshape(n, o, 1, levels.size), (n, o, h, levels.size))
    return np.where(closed[None, :, :, None], 0.0, full)


def hindsight_rows(actuals: np.ndarray, quantiles: Sequence[float]) -> list[dict[str, object]]:
    """One row per reference on the rungs' cells: wQL overall and per quantile, and the outer
    interval's coverage. Unlike the rungs' forecasts they are not rounded as published: they are
    the actuals' own values, which rounding would move off them (a float32 actual of 24924.51 is
    24924.509765625, and rounded to thousandths the quantile would sit above it)."""
    q = np.asarray(quantiles, dtype=np.float64)
    rows = []
    for group, sees in GROUPS.items():
        pred = hindsight_forecasts(actuals, quantiles, group)
        per_q, wql = weighted_quantile_loss(actuals, pred, q)
        row: dict[str, object] = {"reference": f"hindsight-{group}", "wql": wql}
        row.update({f"wql_p{round(level * 100):d}": float(v) for level, v in zip(q, per_q, strict=True)})
        row[f"coverage_p{round(q[0] * 100):d}_p{round(q[-1] * 100):d}"] = coverage(
            actuals, pred[..., 0], pred[..., -1]
        )
        row["quantiles_fitted_on"] = sees
        rows.append(row)
    return rows
