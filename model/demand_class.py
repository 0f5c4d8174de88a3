"""Demand classes of items (Syntetos, Boylan and Croston, 2005), from each item's history.

A planner reads accuracy per class because the classes forecast so differently: *smooth* items
(demand in most buckets, sizes alike) are where a model can earn its keep; *lumpy* ones (rare
demand of very unequal sizes) are mostly noise to any forecaster that sees only the item's
history. Two numbers place an item:

- ADI, the average demand interval: observed buckets per bucket with demand (1.0 = demand in
  every bucket);
- CV², the squared coefficient of variation of the non-zero demand sizes.

The cut-offs are the published ones (ADI 1.32, CV² 0.49). Items with fewer than two buckets of
demand in the window cannot be placed and get their own class.
"""

from __future__ import annotations

import numpy as np

#: Class names, indexed by the codes :func:`demand_classes` returns.
CLASSES: tuple[str, ...] = ("smooth", "erratic", "intermittent", "lumpy", "sparse")
#: Average demand interval above which demand counts as intermittent.
ADI_CUTOFF = 1.32
#: Squared coefficient of variation of the non-zero sizes above which sizes count as erratic.
CV2_CUTOFF = 0.49


def demand_classes(qty: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each item's class code (an index into :data:`CLASSES`), ADI and CV².

    ``qty`` and ``observed`` are [N, T] (the buckets to judge by, e.g. the training window); only
    observed buckets count. Items with fewer than two non-zero observed buckets get ``sparse`` and
    NaN for the measure they lack.
    """
    qty = np.asarray(qty, dtype=np.float64)
    seen = np.asarray(observed, dtype=bool) & np.isfinite(qty)
    demand = seen & (qty > 0)
    n_seen = seen.sum(axis=1)
    n_demand = demand.sum(axis=1)
    sizes = np.where(demand, qty, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        adi = np.where(n_demand > 0, n_seen / n_demand, np.nan)
        mean = sizes.sum(axis=1) / n_demand
        var = np.where(demand, (qty - mean[:, None]) ** 2, 0.0).sum(axis=1) / n_demand
        cv2 = np.where(n_demand > 1, var / mean**2, np.nan)
    codes = np.full(qty.shape[0], CLASSES.index("sparse"), dtype=np.int8)
    placed = n_demand > 1
    intermittent = adi > ADI_CUTOFF
    erratic = cv2 > CV2_CUTOFF
    codes[placed & ~intermittent & ~erratic] = CLASSES.index("smooth")
    codes[placed & ~intermittent & erratic] = CLASSES.index("erratic")
    codes[placed & intermittent & ~erratic] = CLASSES.index("intermittent")
    codes[placed & intermittent & erratic] = CLASSES.index("lumpy")
    return codes, adi, cv2
