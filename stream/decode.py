"""Decode and validate sales events (DESIGN.md contract) into columns.

A poll's worth of raw values becomes four numpy columns; every value that breaks the contract is
reported with its position and a reason, for the dead-letter topic. Nothing here raises on bad
input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import numpy as np
import orjson

# Beyond this an epoch value is certainly not milliseconds of a real sale (year ~5100).
_MAX_EPOCH_MS = 100_000_000_000_000


@dataclass
class DecodedBatch:
    """Valid events as columns, plus the rejected ones."""

    item_ids: np.ndarray  # object [n]
    event_ms: np.ndarray  # int64 [n]
    qty: np.ndarray  # float64 [n]
    price: np.ndarray  # float64 [n], NaN when absent
    positions: np.ndarray  # int64 [n]: index of each valid event in the input
    invalid: list[tuple[int, str]]  # (index in the input, reason)

    def __len__(self) -> int:
        return int(self.event_ms.shape[0])


class TimestampCache:
    """RFC 3339 strings to epoch ms, remembering recent strings (events share timestamps a lot)."""

    def __init__(self, max_size: int = 65_536) -> None:
        self._cache: dict[str, int] = {}
        self._max = max_size

    def parse(self, text: str) -> int:
        """Epoch milliseconds of an RFC 3339 / ISO 8601 string; naive times are taken as UTC."""
        ms = self._cache.get(text)
        if ms is not None:
            return ms
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ms = round(dt.timestamp() * 1000)
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[text] = ms
        return ms


def _number(value: object) -> float | None:
    # bool is an int subclass, and "qty": true is not a quantity.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class _Event(msgspec.Struct, gc=False):
    """The contract's fields with the checks msgspec can make while it parses (in C); extra fields are
    ignored. ``float`` takes JSON integers too, and refuses ``true``/``false``."""

    item_id: Annotated[str, msgspec.Meta(min_length=1)]
    ts: float | str
    qty: Annotated[float, msgspec.Meta(ge=0)]
    price: float | None = None


_EVENT = msgspec.json.Decoder(_Event)


def _decode_clean(values: list[bytes | None], ts_cache: TimestampCache) -> DecodedBatch | None:
    """The common case, checked column by column: every value a valid event. None when any is not.

    Parsing straight into typed records, then checking whole columns at once (the set of types in
    a column, then numpy range checks), costs a fraction of validating event by event; a batch
    with any bad event is left to the exact per-event path, which finds each bad one and its reason.
    """
    decode = _EVENT.decode
    try:
        events = [decode(v) for v in values]
    except (msgspec.DecodeError, TypeError):  # ValidationError is a DecodeError; TypeError: None
        return None
    ts = [e.ts for e in events]
    ts_types = set(map(type, ts))
    if ts_types == {float}:
        ts_f = np.array(ts, dtype=np.float64)
        if not np.all((ts_f >= 0) & (ts_f < _MAX_EPOCH_MS)):
            return None
        event_ms = ts_f.astype(np.int64)
    elif ts_types == {str}:
        try:
            event_ms = np.array([ts_cache.parse(t) for t in ts], dtype=np.int64)
        except (ValueError, OverflowError):
            return None
    else:
        return None
    q = np.array([e.qty for e in events], dtype=np.float64)
    if not np.all(np.isfinite(q)):  # out-of-range literals such as 1e999 parse as infinity
        return None
    # None becomes NaN, which marks an absent price (JSON itself has no NaN).
    pr = np.array([e.price for e in events], dtype=np.float64)
    if np.any(np.isinf(pr) | (pr < 0)):
        return None
    return DecodedBatch(
        item_ids=np.array([e.item_id for e in events], dtype=object),
        event_ms=event_ms,
        qty=q,
        price=pr,
        positions=np.arange(len(values), dtype=np.int64),
        invalid=[],
    )


def decode_events(values: list[bytes | None], timestamps: TimestampCache | None = None) -> DecodedBatch:
    """Decode raw JSON values into a :class:`DecodedBatch`; invalid ones carry their reason."""
    ts_cache = timestamps or TimestampCache()
    if values:
        clean = _decode_clean(values, ts_cache)
        if clean is not None:
            return clean
    return _decode_each(values, ts_cache)


def _decode_each(values: list[bytes | None], ts_cache: TimestampCache) -> DecodedBatch:
    """Event by event, with the reason for each one rejected."""
    items: list[str] = []
    times: list[int] = []
    qtys: list[float] = []
    prices: list[float] = []
    positions: list[int] = []
    invalid: list[tuple[int, str]] = []
    nan = math.nan
    for i, raw in enumerate(values):
        if not raw:
            invalid.append((i, "empty message value"))
            continue
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            invalid.append((i, f"malformed JSON: {exc}"))
            continue
        if not isinstance(event, dict):
            invalid.append((i, "event must be a JSON object"))
            continue
        item = event.get("item_id")
        if not isinstance(item, str) or not item:
            invalid.append((i, "item_id must be a non-empty string"))
            continue
        ts = event.get("ts")
        if isinstance(ts, str):
            try:
                ms = ts_cache.parse(ts)
            except (ValueError, OverflowError):
                invalid.append((i, f"ts {ts[:64]!r} is not an RFC 3339 time"))
                continue
        else:
            num = _number(ts)
            if num is None:
                invalid.append((i, "ts must be an RFC 3339 string or epoch milliseconds"))
                continue
            if not (0 <= num < _MAX_EPOCH_MS):
                invalid.append((i, f"ts {ts!r} is out of range for epoch milliseconds"))
                continue
            ms = int(num)
        qty = _number(event.get("qty"))
        if qty is None or not math.isfinite(qty):
            invalid.append((i, "qty must be a finite number"))
            continue
        if qty < 0:
            invalid.append((i, f"qty must be >= 0, got {qty:g}"))
            continue
        raw_price = event.get("price")
        if raw_price is None:
            price = nan
        else:
            price = _number(raw_price)
            if price is None or not math.isfinite(price) or price < 0:
                invalid.append((i, "price must be a finite number >= 0 when present"))
                continue
        items.append(item)
        times.append(ms)
        qtys.append(qty)
        prices.append(price)
        positions.append(i)
    return DecodedBatch(
        item_ids=np.array(items, dtype=object),
        event_ms=np.array(times, dtype=np.int64),
        qty=np.array(qtys, dtype=np.float64),
        price=np.array(prices, dtype=np.float64),
        positions=np.array(positions, dtype=np.int64),
        invalid=invalid,
    )
