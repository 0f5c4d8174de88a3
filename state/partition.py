"""Rolling demand state of one input partition, as columnar numpy arrays.

Each item owns a row: a ring buffer of its last ``L`` closed buckets (demand and carried-forward
price), the open buckets still accepting events, its first bucket, and its forecast ledger. The
partition's watermark (largest event time minus the allowed lateness) decides when a bucket closes;
a bucket closes for every item of the partition at once, zero for the items that did not sell.

Buckets close one at a time (:meth:`PartitionState.close_next`), because the forecast made at one
bucket is scored, and becomes feedback, when the next one closes: the runner records each
bucket's forecasts before it closes the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np

from state.arrays import grown
from state.buckets import bucket_of, closed_before
from state.config import StateConfig
from state.feedback import item_scale
from state.ledger import Ledger, RealisedScore

_NEVER = np.iinfo(np.int64).max
_NO_TIME = np.iinfo(np.int64).min


@dataclass
class OpenBucket:
    """Sums of a bucket that has not closed yet, one entry per item row."""

    qty: np.ndarray  # float64 [capacity]
    amount: np.ndarray  # float64 [capacity]: sum of qty * price over priced events
    priced_qty: np.ndarray  # float64 [capacity]: qty of the priced events

    @classmethod
    def empty(cls, capacity: int) -> OpenBucket:
        return cls(np.zeros(capacity), np.zeros(capacity), np.zeros(capacity))

    def grow(self, capacity: int) -> None:
        for name in ("qty", "amount", "priced_qty"):
            old = getattr(self, name)
            new = np.zeros(capacity)
            new[: old.size] = old
            setattr(self, name, new)


@dataclass
class ClosedBucket:
    """What closing one bucket produced: the inputs of its forecasts and the score of older ones."""

    bucket: int
    rows: np.ndarray  # int64 [n]: items due for a forecast (those already seen)
    item_ids: np.ndarray  # object [n]
    target: np.ndarray  # float32 [n, L]: demand of the last L buckets, oldest first
    observed: np.ndarray  # float32 [n, L]: 1 within the item's known life
    price: np.ndarray  # float32 [n, L]: carried-forward price, NaN before the first price
    feedback: np.ndarray  # float32 [n, F]
    window_buckets: np.ndarray  # int64 [L]: bucket index of each window column
    score: RealisedScore

    def split(self, k: int) -> tuple[ClosedBucket, ClosedBucket]:
        """The first ``k`` items and the rest, as two closed buckets of the same bucket (forecasting
        them apart records the same ledger entries as forecasting them together)."""
        head = {f: getattr(self, f)[:k] for f in _PER_ITEM}
        tail = {f: getattr(self, f)[k:] for f in _PER_ITEM}
        shared = {"bucket": self.bucket, "window_buckets": self.window_buckets, "score": self.score}
        return ClosedBucket(**head, **shared), ClosedBucket(**tail, **shared)


_PER_ITEM = ("rows", "item_ids", "target", "observed", "price", "feedback")


class PartitionState:
    """The rolling state of one partition: item rows, ring buffers, open buckets and the ledger."""

    def __init__(self, cfg: StateConfig, partition: int = 0) -> None:
        self.cfg = cfg
        self.partition = partition
        cap = cfg.initial_capacity
        length = cfg.context_length
        self.index: dict[str, int] = {}
        self.ids = np.empty(cap, dtype=object)  # item id of each row
        self.qty = np.zeros((cap, length), dtype=np.float32)
        self.price = np.full((cap, length), np.nan, dtype=np.float32)
        self.first_bucket = np.full(cap, _NEVER, dtype=np.int64)
        self.last_sale = np.full(cap, _NO_TIME, dtype=np.int64)
        self.last_price = np.full(cap, np.nan, dtype=np.float32)
        self.open: dict[int, OpenBucket] = {}
        self.ledger = Ledger(
            cap, cfg.horizons, cfg.quantiles, cfg.feedback_alpha, cfg.feedback_window, cfg.feedback_previous
        )
        self.next_close: int | None = None
        self.max_event_ms = int(_NO_TIME)

    # -- items -----------------------------------------------------------------------------------

    @property
    def n_items(self) -> int:
        return len(self.index)

    @property
    def capacity(self) -> int:
        return int(self.first_bucket.shape[0])

    def rows_for(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each item id, creating rows for new items in order of first appearance (int64 [n])."""
        ids = item_ids.tolist() if isinstance(item_ids, np.ndarray) else list(item_ids)
        # One C-level dict lookup per event; only items never seen before take the Python path.
        rows = np.fromiter(map(self.index.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            start = self.n_items
            new: list[str] = []
            for pos in missing.tolist():
                item = ids[pos]
                row = self.index.get(item)
                if row is None:
                    row = start + len(new)
                    new.append(item)
                    self.index[item] = row
                rows[pos] = row
            self._ensure_capacity(start + len(new))
            self.ids[start : start + len(new)] = new
        return rows

    def reserve(self, n: int) -> None:
        """Make room for ``n`` item rows up front (restores and benchmarks know their size)."""
        self._ensure_capacity(n)

    def _ensure_capacity(self, n: int) -> None:
        cap = self.capacity
        if n <= cap:
            return
        while cap < n:
            cap *= 2
        self.ids = grown(self.ids, cap, None)
        self.qty = grown(self.qty, cap, 0.0)
        self.price = grown(self.price, cap, np.nan)
        self.first_bucket = grown(self.first_bucket, cap, _NEVER)
        self.last_sale = grown(self.last_sale, cap, _NO_TIME)
        self.last_price = grown(self.last_price, cap, np.nan)
        for acc in self.open.values():
            acc.grow(cap)
        self.ledger.grow(cap)

    # -- events ----------------------------------------------------------------------------------

    def watermark_ms(self) -> int:
        """Largest event time seen minus the allowed lateness (very negative before any event)."""
        if self.max_event_ms == _NO_TIME:
            return int(_NO_TIME)
        return self.max_event_ms - self.cfg.allowed_lateness_ms

    def ingest(
        self, item_ids: np.ndarray, event_ms: np.ndarray, qty: np.ndarray, price: np.ndarray
    ) -> np.ndarray:
        """Add a batch of events, in offset order; returns the boolean mask of late events.

        An event is late when its bucket had already closed by the watermark of the events before
        it. Late events are not counted (the caller dead-letters them). Evaluating lateness against
        the running maximum makes the result independent of how events are split into batches.
        """
        n = event_ms.shape[0]
        if n == 0:
            return np.zeros(0, dtype=bool)
        event_ms = np.asarray(event_ms, dtype=np.int64)
        buckets = bucket_of(event_ms, self.cfg.freq)
        running = np.maximum.accumulate(np.concatenate([[self.max_event_ms], event_ms]))
        prior_max = running[:-1]
        if self.next_close is None:
            first_open = int(closed_before(event_ms[0] - self.cfg.allowed_lateness_ms, self.cfg.freq))
            self.next_close = first_open
        seen = prior_max != _NO_TIME
        limit = np.where(
            seen,
            closed_before(np.where(seen, prior_max - self.cfg.allowed_lateness_ms, 0), self.cfg.freq),
            self.next_close,
        )
        late = buckets < np.maximum(limit, self.next_close)
        self.max_event_ms = int(running[-1])

        ok = ~late
        n_ok = int(ok.sum())
        if n_ok == 0:
            return late
        q_ok = np.asarray(qty, dtype=np.float64)
        p_ok = np.asarray(price, dtype=np.float64)
        if n_ok == n:  # the usual case: no copies
            rows, b_ok = self.rows_for(item_ids), buckets
        else:
            rows = self.rows_for(np.asarray(item_ids)[ok])
            b_ok, q_ok, p_ok = buckets[ok], q_ok[ok], p_ok[ok]
        np.minimum.at(self.first_bucket, rows, b_ok)
        sold = q_ok > 0
        np.maximum.at(self.last_sale, rows[sold], b_ok[sold])
        priced = sold & np.isfinite(p_ok) & (p_ok > 0)
        for b in np.unique(b_ok).tolist():
            sel = b_ok == b
            acc = self.open.get(b)
            if acc is None:
                acc = self.open[b] = OpenBucket.empty(self.capacity)
            np.add.at(acc.qty, rows[sel], q_ok[sel])
            ps = sel & priced
            np.add.at(acc.amount, rows[ps], q_ok[ps] * p_ok[ps])
            np.add.at(acc.priced_qty, rows[ps], q_ok[ps])
        return late

    # -- closing ---------------------------------------------------------------------------------

    def closable(self) -> int | None:
        """The next bucket whose end the watermark has passed, or None."""
        if self.next_close is None or self.max_event_ms == _NO_TIME:
            return None
        if self.next_close < int(closed_before(self.watermark_ms(), self.cfg.freq)):
            return self.next_close
        return None

    def close_next(self) -> ClosedBucket:
        """Close the next closable bucket: fill the ring, score the ledger, gather forecast inputs."""
        b = self.closable()
        if b is None:
            raise RuntimeError("no bucket can close: the watermark has not passed the next bucket's end")
        length = self.cfg.context_length
        n = self.n_items
        slot = b % length
        acc = self.open.pop(b, None)
        if acc is None:
            actual = np.zeros(n, dtype=np.float32)
            bucket_price = np.full(n, np.nan, dtype=np.float32)
        else:
            actual = acc.qty[:n].astype(np.float32)
            with np.errstate(invalid="ignore", divide="ignore"):
                bucket_price = np.where(
                    acc.priced_qty[:n] > 0, acc.amount[:n] / acc.priced_qty[:n], np.nan
                ).astype(np.float32)
        # Carry the last price forward so the price covariate matches the trainer's carry-forward.
        self.last_price[:n] = np.where(np.isfinite(bucket_price), bucket_price, self.last_price[:n])
        self.qty[:n, slot] = actual
        self.price[:n, slot] = self.last_price[:n]

        window = b - length + 1 + np.arange(length, dtype=np.int64)
        cols = window % length
        target = self.qty[:n][:, cols]
        observed = window[None, :] >= self.first_bucket[:n, None]
        target = np.where(observed, target, 0.0).astype(np.float32)
        tracked = self.first_bucket[:n] <= b
        scale = item_scale(target, observed)
        score = self.ledger.realise(b, actual, scale, tracked)
        self.next_close = b + 1

        rows = np.flatnonzero(tracked)
        return ClosedBucket(
            bucket=b,
            rows=rows,
            item_ids=self.ids[rows],
            target=target[rows],
            observed=observed[rows].astype(np.float32),
            price=np.where(observed[rows], self.price[:n][:, cols][rows], np.nan).astype(np.float32),
            feedback=self.ledger.feedback[rows].copy(),
            window_buckets=window,
            score=score,
        )

    def evict_idle(self, idle_buckets: int) -> int:
        """Forget items that have not sold in the last ``idle_buckets`` closed buckets; returns how many.

        An item that never sold counts from its first event; an item with quantity waiting in an
        open bucket stays. A forgotten item that sells again starts afresh, like a new item.
        """
        if idle_buckets <= 0 or self.next_close is None or self.n_items == 0:
            return 0
        n = self.n_items
        active = np.maximum(self.last_sale[:n], np.minimum(self.first_bucket[:n], self.next_close))
        keep = active >= self.next_close - idle_buckets
        for acc in self.open.values():
            keep |= acc.qty[:n] > 0
        if keep.all():
            return 0
        idx = np.flatnonzero(keep)
        m = idx.size
        for name, fill in (
            ("ids", None),
            ("qty", 0.0),
            ("price", np.nan),
            ("first_bucket", _NEVER),
            ("last_sale", _NO_TIME),
            ("last_price", np.nan),
        ):
            _compact(getattr(self, name), idx, n, fill)
        self.ledger.compact(idx, n)
        for acc in self.open.values():
            for arr in (acc.qty, acc.amount, acc.priced_qty):
                _compact(arr, idx, n, 0.0)
        self.index = {item: row for row, item in enumerate(self.ids[:m].tolist())}
        return n - m

    def record_forecasts(self, origin: int, rows: np.ndarray, values: np.ndarray) -> None:
        """Keep the forecasts made at ``origin`` so they are scored when their targets close."""
        self.ledger.record(origin, rows, values)


def _compact(arr: np.ndarray, keep: np.ndarray, n: int, fill: object) -> None:
    """Move rows ``keep`` (sorted) to the front of ``arr[:n]`` and clear the rows freed behind them."""
    m = keep.size
    arr[:m] = arr[keep]
    arr[m:n] = fill
