"""Synthetic daily histories shared by the backtest and baseline tests."""

from __future__ import annotations

import numpy as np

from model.history import History, dates_to_buckets

PATTERN = np.array([0.0, 1.0, 1.0, 1.5, 2.0, 3.0, 0.5])  # a shop closed one day a week


def seasonal_history(
    n_items: int = 16,
    n_days: int = 112,
    noise: bool = True,
    seed: int = 0,
    late_first: int | None = 80,
    price: float | None = 2.0,
) -> History:
    """Daily demand = level x weekly pattern (Poisson when ``noise``), levels 100x apart and a
    static store column; with ``noise`` also staggered starts, item 0 starting on day ``late_first``
    (untracked at early origins; None: staggered like the rest) and a few unobserved days. ``price``
    is every observed day's price (None: no prices)."""
    rng = np.random.default_rng(seed)
    level = np.geomspace(0.5, 50.0, n_items)
    mean = level[:, None] * PATTERN[np.arange(n_days) % 7][None, :]
    qty = rng.poisson(mean).astype(np.float32) if noise else mean.astype(np.float32)
    observed = np.ones((n_items, n_days), dtype=bool)
    if noise:
        first = rng.integers(0, 30, n_items)
        if late_first is not None:
            first[0] = late_first
        observed &= np.arange(n_days)[None, :] >= first[:, None]
        observed &= rng.random((n_items, n_days)) > 0.03
    prices = np.where(observed, np.nan if price is None else price, np.nan).astype(np.float32)
    return daily_history(qty, observed, prices)


def daily_history(qty: np.ndarray, observed: np.ndarray, price: np.ndarray) -> History:
    """A daily :class:`History` of ``qty`` [items, days] from Monday 2021-01-04 on, so column t is
    weekday t % 7; items ``sku-i`` in three stores; unobserved days hold no demand."""
    n_items = qty.shape[0]
    return History(
        item_ids=np.array([f"sku-{i}" for i in range(n_items)]),
        freq="D",
        first_bucket=int(dates_to_buckets(np.array(["2021-01-04"]), "D")[0]),
        qty=np.where(observed, qty, 0.0).astype(np.float32),
        observed=observed,
        price=price,
        static={"store": np.array([f"s{i % 3}" for i in range(n_items)])},
    )
