"""Turn closed buckets into the network's input arrays (the same features the trainer builds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from model.features import CALENDAR_FEATURES, calendar_features, log_price, static_ids
from state.buckets import bucket_start
from state.partition import ClosedBucket


@dataclass
class ModelInputs:
    """One batch of network inputs, in the order of the network's ``forward``.

    The past covariates come whole (``past_cov``) or as their two parts (``past_cov`` None): the
    calendar rows every item of the batch shares and each item's log price, the last column. The
    service assembles the parts for a predictor on a GPU (``Predictor.split_past``), which joins
    them on the device: the host then writes and copies 4 bytes per item and bucket instead of
    ``4 * Cp`` (a ninth, for a daily model).
    """

    target: np.ndarray  # float32 [B, L]
    observed: np.ndarray  # float32 [B, L]
    past_cov: np.ndarray | None  # float32 [B, L, Cp], or None: the two parts below
    future_cov: np.ndarray  # float32 [B, H, Cf]
    static: np.ndarray  # int64 [B, S]
    feedback: np.ndarray  # float32 [B, F]
    past_calendar: np.ndarray | None = None  # float32 [L, Cp - 1], the same for every row
    log_price: np.ndarray | None = None  # float32 [B, L]

    def __post_init__(self) -> None:
        if self.past_cov is None and (self.past_calendar is None or self.log_price is None):
            raise ValueError("ModelInputs needs past_cov, or both past_calendar and log_price")

    @property
    def rows(self) -> int:
        return int(self.target.shape[0])

    @property
    def split(self) -> bool:
        """Whether the past covariates come as calendar and prices (see the class)."""
        return self.past_cov is None

    def past_covariates(self) -> np.ndarray:
        """The past covariates whole, [B, L, Cp] (joined here when they come in parts)."""
        if self.past_cov is not None:
            return self.past_cov
        assert self.past_calendar is not None and self.log_price is not None
        rows, length = self.log_price.shape
        out = np.empty((rows, length, self.past_calendar.shape[1] + 1), dtype=np.float32)
        out[:, :, :-1] = self.past_calendar
        out[:, :, -1] = self.log_price
        return out

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays in the order of the network's ``forward`` (the past covariates whole)."""
        return (
            self.target,
            self.observed,
            self.past_covariates(),
            self.future_cov,
            self.static,
            self.feedback,
        )

    def slice(self, start: int, stop: int) -> ModelInputs:
        """Rows ``[start, stop)``, the past covariates in the form they come in."""
        return ModelInputs(
            *(None if a is None else a[start:stop] for a in self._row_arrays()),
            past_calendar=self.past_calendar,
            log_price=None if self.log_price is None else self.log_price[start:stop],
        )

    def _row_arrays(self) -> tuple[np.ndarray | None, ...]:
        """The per-row arrays in ``forward``'s order, ``past_cov`` as it is (None when split)."""
        return (self.target, self.observed, self.past_cov, self.future_cov, self.static, self.feedback)


class StaticTable:
    """Static attributes (store, category, ...) of items, hashed as the trainer hashes them.

    The ids live in one table, a row per item, so that a batch looks up its items with one dict
    lookup each and one gather, not a numpy row copy per item (that was 0.56 µs per item).
    """

    def __init__(self, columns: tuple[str, ...], vocab_size: int) -> None:
        self.columns = columns
        self.vocab_size = vocab_size
        self._row: dict[str, int] = {}
        # Row 0 is every unknown item: all ids 0, the hash of "unknown".
        self._table = np.zeros((1024, len(columns)), dtype=np.int64)
        self._used = 1

    def __len__(self) -> int:
        """Items with attributes."""
        return len(self._row)

    def update(self, item_id: str, attributes: dict[str, object]) -> None:
        """Set an item's attributes; missing (or null) columns hash to 'unknown' (0). A value is
        hashed as its text, as the history file's column was in training (``3`` and ``"3"`` alike)."""
        values = np.array(["" if (v := attributes.get(c)) is None else str(v) for c in self.columns])
        row = self._row.get(item_id)
        if row is None:
            row = self._used
            if row == self._table.shape[0]:
                self._table = np.concatenate([self._table, np.zeros_like(self._table)])
            self._row[item_id] = row
            self._used += 1
        self._table[row] = static_ids(values, self.vocab_size)

    def forget(self, item_id: str) -> None:
        """Drop an item's attributes (a tombstone on the items topic): it is unknown again."""
        row = self._row.pop(item_id, None)
        if row is not None:
            self._table[row] = 0  # left unused: rows never move, so lookups stay one gather

    def ids_for(self, item_ids: np.ndarray) -> np.ndarray:
        """int64 [n, S] ids, zeros for items without attributes (cold start by the pooled model)."""
        if not self.columns or not self._row:
            return np.zeros((len(item_ids), len(self.columns)), dtype=np.int64)
        rows = np.fromiter(map(self._row.get, item_ids, repeat(0)), dtype=np.int64, count=len(item_ids))
        return self._table[rows]


def calendar_columns(meta: dict) -> tuple[str, ...]:
    """The calendar covariates a model reads, in its order: its metadata's future features, which
    its past features repeat before the price. Models exported before a column existed name fewer.
    Raises ValueError, saying why, for a model that names others or orders them otherwise."""
    features = meta.get("features", {})
    future = tuple(features.get("future", ()))
    past = tuple(features.get("past", ()))
    unknown = [c for c in future if c not in CALENDAR_FEATURES]
    if unknown:
        raise ValueError(f"the model reads calendar covariates this service does not compute: {unknown}")
    if past != (*future, "log_price"):
        raise ValueError(
            f"the model's past covariates {list(past)} are not its future ones {list(future)} then log_price"
        )
    return future


def inputs_for(
    closed: ClosedBucket,
    freq: str,
    horizons: int,
    statics: StaticTable,
    calendar: tuple[str, ...] = CALENDAR_FEATURES,
    split_past: bool = False,
) -> ModelInputs:
    """Network inputs for every item due at one closed bucket."""
    return PendingInputs([closed], freq, horizons, statics, calendar, split_past).slice(0, closed.rows.size)


class PendingInputs:
    """The network inputs of the items of several closed buckets, assembled a batch at a time.

    :meth:`slice` builds the rows a model batch needs when it is asked for, so the model starts on
    the first batch while the caller assembles the next ones, and a large bucket roll never holds
    every item's covariates at once (the past covariates alone are ``4 * L * C`` bytes per item).
    Each bucket's calendar rows are computed once, with the ``calendar`` columns the model reads
    (:func:`calendar_columns`). ``split_past`` leaves the past covariates in their two parts
    (:class:`ModelInputs`), for a predictor that joins them itself (``Predictor.split_past``).
    """

    def __init__(
        self,
        closed: Sequence[ClosedBucket],
        freq: str,
        horizons: int,
        statics: StaticTable,
        calendar: tuple[str, ...] = CALENDAR_FEATURES,
        split_past: bool = False,
    ) -> None:
        self.parts = list(closed)
        if not self.parts:
            raise ValueError("no closed buckets to assemble inputs for")
        self.freq = freq
        self.horizons = horizons
        self.statics = statics
        self.calendar = calendar
        self.split_past = split_past
        self.bounds = np.concatenate([[0], np.cumsum([c.rows.size for c in self.parts], dtype=np.int64)])
        self._calendars: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def rows(self) -> int:
        return int(self.bounds[-1])

    def slice(self, start: int, stop: int) -> ModelInputs:
        """The inputs of rows ``[start, stop)`` (in the order of the closed buckets given)."""
        if not 0 <= start <= stop <= self.rows:
            raise ValueError(f"rows [{start}, {stop}) outside [0, {self.rows})")
        first = max(0, int(np.searchsorted(self.bounds, start, side="right")) - 1)
        pieces = []
        for k in range(first, len(self.parts)):
            lo, hi = int(self.bounds[k]), int(self.bounds[k + 1])
            if lo >= stop:
                break
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            if b > a:
                pieces.append(self._assemble(self.parts[k], a, b))
        if not pieces:  # an empty slice, still with every input's shape
            return self._assemble(self.parts[min(first, len(self.parts) - 1)], 0, 0)
        return concat_inputs(pieces)

    def _calendar(self, closed: ClosedBucket) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Of one closed bucket: the past calendar [L, C], the past covariates' row template
        [L, C+1] (price column 0) and the future calendar [H, C]; the same arrays for every closed
        bucket of the same bucket and window."""
        key = (closed.bucket, int(closed.window_buckets[0]), closed.window_buckets.size)
        cached = self._calendars.get(key)
        if cached is None:
            past_cal = calendar_features(bucket_start(closed.window_buckets, self.freq), self.calendar)
            future = closed.bucket + 1 + np.arange(self.horizons, dtype=np.int64)
            template = np.zeros((past_cal.shape[0], past_cal.shape[1] + 1), dtype=np.float32)
            template[:, :-1] = past_cal
            past_cal = np.ascontiguousarray(past_cal, dtype=np.float32)
            cached = (past_cal, template, calendar_features(bucket_start(future, self.freq), self.calendar))
            self._calendars[key] = cached
        return cached

    def _assemble(self, closed: ClosedBucket, a: int, b: int) -> ModelInputs:
        past_cal, template, future_cal = self._calendar(closed)
        n = b - a
        prices = np.asarray(log_price(closed.price[a:b], carried=True), dtype=np.float32)
        if self.split_past:
            past_cov = None
        else:
            # The row template broadcast over the items copies whole rows, about five times faster
            # than writing the calendar columns into every item's rows; the price column follows.
            past_cov = np.empty((n, *template.shape), dtype=np.float32)
            past_cov[:] = template
            past_cov[:, :, -1] = prices
        return ModelInputs(
            target=closed.target[a:b],
            observed=closed.observed[a:b],
            past_cov=past_cov,
            future_cov=np.repeat(future_cal[None], n, axis=0),
            static=self.statics.ids_for(closed.item_ids[a:b]),
            feedback=closed.feedback[a:b],
            past_calendar=past_cal if self.split_past else None,
            log_price=prices if self.split_past else None,
        )


def concat_inputs(parts: list[ModelInputs]) -> ModelInputs:
    """Stack several requests' inputs into one batch (the past covariates stay in parts where
    every part has them so with the same calendar, as the closed buckets of one bucket have)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0].past_calendar
    if first is not None and all(
        p.split and (p.past_calendar is first or np.array_equal(p.past_calendar, first)) for p in parts
    ):
        rows = zip(*(p._row_arrays() for p in parts), strict=True)
        return ModelInputs(
            *(None if column[0] is None else np.concatenate(column) for column in rows),
            past_calendar=first,
            log_price=np.concatenate([p.log_price for p in parts]),
        )
    return ModelInputs(*(np.concatenate(column) for column in zip(*(p.arrays() for p in parts), strict=True)))


def probe_inputs(meta: dict, rows: int = 4) -> ModelInputs:
    """A small synthetic batch shaped as ``meta`` describes (for a test forward of a new artefact)."""
    length, horizons = int(meta["context_length"]), int(meta["horizons"])
    features = meta.get("features", {})
    past, future = len(features.get("past", [])), len(features.get("future", []))
    n_feedback, n_static = len(features.get("feedback", [])), len(meta.get("static_columns", []))
    rng = np.random.default_rng(0)
    target = rng.poisson(3.0, size=(rows, length)).astype(np.float32)
    return ModelInputs(
        target=target,
        observed=np.ones((rows, length), dtype=np.float32),
        past_cov=np.zeros((rows, length, past), dtype=np.float32),
        future_cov=np.zeros((rows, horizons, future), dtype=np.float32),
        static=np.zeros((rows, n_static), dtype=np.int64),
        feedback=np.zeros((rows, n_feedback), dtype=np.float32),
    )
