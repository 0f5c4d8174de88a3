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
    "dom_sin",
    "dom_cos",
    "easter_before",
    "easter_after",
)
#: The calendar of models exported before the day of the month and Easter were covariates. Such a
#: model still serves: the service computes the columns its metadata names.
CALENDAR_FEATURES_V1 = CALENDAR_FEATURES[:6]
#: Columns of the past covariates: the calendar plus the (log) price.
PAST_COVARIATES = (*CALENDAR_FEATURES, "log_price")
#: Known future covariates: the calendar of the target bucket.
FUTURE_COVARIATES = CALENDAR_FEATURES

#: The covariates of the yearly cycle.
DAY_OF_YEAR = ("doy_sin", "doy_cos")
#: The covariates of the monthly cycle.
DAY_OF_MONTH = ("dom_sin", "dom_cos")
#: The covariates of the weeks around Easter.
EASTER = ("easter_before", "easter_after")


#: How a training is told to treat an optional calendar cycle: as the data suggest, or forced.
CALENDAR_CHOICES = ("auto", "on", "off")


def check_calendar_choice(name: str, choice: str) -> None:
    """Raise ValueError unless ``choice`` (of option ``name``) is one of :data:`CALENDAR_CHOICES`."""
    if choice not in CALENDAR_CHOICES:
        raise ValueError(f"{name} must be 'auto', 'on' or 'off', got {choice!r}")


def reads_day_of_month(choice: str, freq: str) -> bool:
    """Whether a model of ``freq`` buckets trained with ``day_of_month=choice`` reads the day of the
    month: "auto" reads it for weekly and monthly buckets only. With Easter's covariates, on
    Walmart's weekly sales it took the feedback rung's wQL from 0.0576 / 0.0592 to 0.0571 / 0.0566
    (seeds 0 / 1); on daily retail it made the MQ-CNN's 0.4-0.6% worse and its forecasts 18-35%
    more volatile. Hourly data follows daily, untested."""
    check_calendar_choice("day_of_month", choice)
    return choice == "on" or (choice == "auto" and freq in ("W", "M"))


#: Days before and after Easter Sunday over which its covariates fall from 1 to 0.
EASTER_REACH_DAYS = 14

_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000


def easter_sunday(years: np.ndarray) -> np.ndarray:
    """Gregorian Easter Sunday (datetime64[D]) of each year, by the anonymous Gregorian computus."""
    y = np.asarray(years, dtype=np.int64)
    a, b, c = y % 19, y // 100, y % 100
    d, e = b // 4, b % 4
    g = (b - (b + 8) // 25 + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    weekday = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * weekday) // 451
    n = h + weekday - 7 * m + 114  # month * 31 + day - 1
    month_start = (y - 1970).astype("datetime64[Y]").astype("datetime64[M]") + (n // 31 - 1)
    return month_start.astype("datetime64[D]") + n % 31


def calendar_features(start_ms: np.ndarray, columns: tuple[str, ...] = CALENDAR_FEATURES) -> np.ndarray:
    """Calendar encoding of bucket start times, float32 [..., len(columns)] (names from
    :data:`CALENDAR_FEATURES`, in the order given).

    Hour of day, day of week, day of year and day of month as sine/cosine pairs; coarse buckets
    simply see constant values in the finer cycles. Easter moves by up to five weeks from year to
    year, so the day of the year cannot place it (summed over Walmart's weekly series, the week before
    Easter 2012 sold 16.6% more than the same week of 2011): ``easter_before`` rises linearly from 0 to 1 over
    the :data:`EASTER_REACH_DAYS` before Easter Sunday (1 on the Sunday itself, and for a bucket
    that starts on it), ``easter_after`` falls from 1 to 0 over the days after it.
    """
    unknown = [c for c in columns if c not in CALENDAR_FEATURES]
    if unknown:
        raise ValueError(f"unknown calendar columns {unknown}; known: {', '.join(CALENDAR_FEATURES)}")
    ms = np.asarray(start_ms, dtype=np.int64)
    hour = (ms // _MS_PER_HOUR) % 24
    day = ms // _MS_PER_DAY
    dow = (day + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    days = ms.astype("datetime64[ms]").astype("datetime64[D]")
    year = days.astype("datetime64[Y]")
    month = days.astype("datetime64[M]")
    doy = (days - year.astype("datetime64[D]")).astype(np.int64)
    dom = (days - month.astype("datetime64[D]")).astype(np.int64)
    next_month = (month + np.timedelta64(1, "M")).astype("datetime64[D]")
    month_days = (next_month - month.astype("datetime64[D]")).astype(np.int64)
    to_easter = (easter_sunday(year.astype(np.int64) + 1970) - days).astype(np.int64)
    reach = float(EASTER_REACH_DAYS)
    two_pi = 2.0 * np.pi
    angle = {"hour": two_pi * hour / 24.0, "dow": two_pi * dow / 7.0, "doy": two_pi * doy / 365.25}
    angle["dom"] = two_pi * dom / month_days
    values = {
        "easter_before": np.where(to_easter >= 0, np.clip(1.0 - to_easter / reach, 0.0, 1.0), 0.0),
        "easter_after": np.where(to_easter < 0, np.clip(1.0 + to_easter / reach, 0.0, 1.0), 0.0),
    }
    for name, a in angle.items():
        values[f"{name}_sin"], values[f"{name}_cos"] = np.sin(a), np.cos(a)
    out = np.stack([np.broadcast_to(values[c], ms.shape) for c in columns], axis=-1)
    return out.astype(np.float32)


def silent_calendar(start_ms: np.ndarray, columns: tuple[str, ...] = CALENDAR_FEATURES) -> tuple[str, ...]:
    """The ``columns`` that are zero at every one of the bucket starts ``start_ms`` (Easter's, over
    a stretch of time without one): a network trained on those buckets learns nothing of them."""
    values = calendar_features(start_ms, columns).reshape(-1, len(columns))
    return tuple(c for c, moved in zip(columns, values.any(axis=0), strict=True) if not moved)


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
    filled = np.asarray(price if carried else carry_forward(price))
    # fmax takes the 0 where the price is NaN (none known yet) or negative; log1p keeps it 0.
    clipped = np.fmax(filled, np.zeros((), dtype=filled.dtype))
    if clipped.ndim == 0 or clipped.size == 0:
        return np.log1p(clipped).astype(np.float32, copy=False)
    # A price holds for many buckets, so the logarithm (about 20 ns a value, the largest part of
    # the serving inputs) is taken once per run of equal values along the last axis and repeated.
    flat = clipped.reshape(-1)
    starts = np.empty(flat.size, dtype=bool)
    np.not_equal(flat[1:], flat[:-1], out=starts[1:])
    starts.reshape(-1, clipped.shape[-1])[:, 0] = True
    first = np.flatnonzero(starts)
    if first.size > flat.size // 2:  # prices that change at most buckets: repeating would cost more
        np.log1p(clipped, out=clipped)
        return clipped.astype(np.float32, copy=False)
    logs = np.log1p(flat[first]).astype(np.float32, copy=False)
    return np.repeat(logs, np.diff(first, append=flat.size)).reshape(clipped.shape)


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
