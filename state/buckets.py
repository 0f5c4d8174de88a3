"""Event-time buckets: which bucket an event belongs to, and when a bucket starts.

Buckets are numpy datetime64 units (``h``, ``D``, ``W``, ``M``), so a month is a calendar month and
the arithmetic stays vectorised.
"""

from __future__ import annotations

import numpy as np

FREQUENCIES = ("h", "D", "W", "M")


def check_freq(freq: str) -> str:
    """Return ``freq`` if it is a supported bucket unit, else raise ValueError naming the choices."""
    if freq not in FREQUENCIES:
        raise ValueError(f"bucket unit {freq!r} is not one of {', '.join(FREQUENCIES)}")
    return freq


def bucket_of(event_ms: np.ndarray, freq: str) -> np.ndarray:
    """Bucket index (int64) of each epoch-millisecond timestamp."""
    return (
        np.asarray(event_ms, dtype=np.int64)
        .astype("datetime64[ms]")
        .astype(f"datetime64[{freq}]")
        .astype(np.int64)
    )


def bucket_start(buckets: np.ndarray | int, freq: str) -> np.ndarray:
    """Epoch milliseconds (int64) at which each bucket begins."""
    return (
        np.asarray(buckets, dtype=np.int64)
        .astype(f"datetime64[{freq}]")
        .astype("datetime64[ms]")
        .astype(np.int64)
    )


def closed_before(watermark_ms: np.ndarray | int, freq: str) -> np.ndarray:
    """First bucket not yet closed at each watermark: every bucket below it has ended.

    A bucket closes once the watermark reaches its end, i.e. the start of the next bucket.
    """
    wm = np.asarray(watermark_ms, dtype=np.int64)
    b = bucket_of(wm, freq)
    # The watermark sits inside bucket b (or exactly at its start, which is the end of b - 1).
    return b
