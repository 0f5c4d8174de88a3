"""Input features shared by training and serving.

Training and serving must build the network's inputs with the same functions, or the model sees
one thing in training and another in production. Everything here is a plain function over numpy
arrays; the serving runner and the trainer both call them.
"""

from __future__ import annotations

import zlib

import numpy as np

#: Columns of :func:`calendar_features`, in order.
CALENDAR_FEATURES = (
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "doy_sin",
    "doy_cos",
)
#: Columns of the past covariates: the calendar plus the (log) price.
PAST_COVARIATES = (*CALENDAR_FEATURES, "log_price")
#: Known future covariates: the calendar of the target bucket.
FUTURE_COVARIATES = CALENDAR_FEATURES

_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000


def calendar_features(start_ms: np.ndarray) -> np.ndarray:
    """Cyclic calendar encoding of bucket start times, float32 [..., 6].

    Hour of day, day of week and day of year as sine/cosine pairs; coarse buckets simply see
    constant values in the finer cycles.
    """
    ms = np.asarray(start_ms, dtype=np.int64)
    hour = (ms // _MS_PER_HOUR) % 24
    day = ms // _MS_PER_DAY
    dow = (day + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    doy = (
        (ms.astype("datetime64[ms]") - ms.astype("datetime64[ms]").astype("datetime64[Y]"))
        .astype("timedelta64[D]")
        .astype(np.int64)
    )
    two_pi = 2.0 * np.pi
    out = np.stack(
        [
            np.sin(two_pi * hour / 24.0),
            np.cos(two_pi * hour / 24.0),
            np.sin(two_pi * dow / 7.0),
            np.cos(two_pi * dow / 7.0),
            np.sin(two_pi * doy / 365.25),
            np.cos(two_pi * doy / 365.25),
        ],
        axis=-1,
    )
    return out.astype(np.float32)


def carry_forward(values: np.ndarray) -> np.ndarray:
    """Fill NaNs along the last axis with the last finite value before them (NaN stays leading)."""
    v = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(v)
    idx = np.where(finite, np.arange(v.shape[-1]), 0)
    np.maximum.accumulate(idx, axis=-1, out=idx)
    out = np.take_along_axis(v, idx, axis=-1)
    seen = np.maximum.accumulate(finite, axis=-1)
    return np.where(seen, out, np.nan).astype(np.float32)


def log_price(price: np.ndarray, carried: bool = False) -> np.ndarray:
    """Price covariate: log1p of the carried-forward price, 0 where no price is known yet.

    ``carried=True`` says the prices are already carried forward (the service's ring buffer keeps
    them so), which skips the carry and gives the same result.
    """
    filled = price if carried else carry_forward(price)
    # In place after the first step: this runs for every item at every serving bucket.
    with np.errstate(invalid="ignore"):
        out = np.maximum(filled, 0.0)
        np.log1p(out, out=out)
    np.nan_to_num(out, copy=False, nan=0.0)
    return out.astype(np.float32, copy=False)


def static_ids(values: np.ndarray, vocab_size: int) -> np.ndarray:
    """Stable hash of categorical values into ``[1, vocab_size)``; 0 means unknown / empty.

    Hashing (rather than a fitted vocabulary) lets an unseen store or category arrive at serving
    time without a retrain, which is what cold start needs.
    """
    vals = np.asarray(values).astype(str)
    out = np.zeros(vals.shape, dtype=np.int64)
    flat = out.reshape(-1)
    for i, v in enumerate(vals.reshape(-1)):
        if v:
            flat[i] = 1 + zlib.crc32(v.encode("utf-8")) % (vocab_size - 1)
    return out
