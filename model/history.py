"""Read a history file (the DESIGN.md long CSV) into dense per-item arrays.

The format is ``item_id,date,qty[,price][,static columns...]``, optionally gzipped. Every command
that reads data (train, backtest, replay) goes through :func:`read_history`, so any file in this
format works, not only the bundled ones.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.errors import HistoryFormatError

#: Bucket units understood everywhere: numpy datetime64 units, so ``D`` means calendar day,
#: ``W`` a 7-day week (numpy's weeks start on Thursday, the weekday of 1970-01-01) and ``M`` a
#: calendar month.
FREQUENCIES = ("h", "D", "W", "M")

_REQUIRED = ("item_id", "date", "qty")


@dataclass
class History:
    """A set of series on one shared bucket axis.

    ``qty[i, t]`` is the demand of item ``i`` in bucket ``first_bucket + t``; ``observed`` marks the
    cells that had a row in the file (a missing row is not a zero sale, it is unknown); ``price`` is
    NaN where the file gave none.
    """

    item_ids: np.ndarray  # str [N]
    freq: str
    first_bucket: int  # bucket index (datetime64[freq] as int) of column 0
    qty: np.ndarray  # float32 [N, T]
    observed: np.ndarray  # bool [N, T]
    price: np.ndarray  # float32 [N, T], NaN where unknown
    static: dict[str, np.ndarray] = field(default_factory=dict)  # name -> str [N]

    @property
    def n_items(self) -> int:
        return int(self.qty.shape[0])

    @property
    def n_buckets(self) -> int:
        return int(self.qty.shape[1])

    def bucket_start_ms(self) -> np.ndarray:
        """Epoch milliseconds of the start of every bucket column, int64 [T]."""
        return bucket_start_ms(np.arange(self.n_buckets) + self.first_bucket, self.freq)

    def head(self, n_buckets: int) -> History:
        """The first ``n_buckets`` columns (a training cut for a backtest)."""
        return History(
            self.item_ids,
            self.freq,
            self.first_bucket,
            self.qty[:, :n_buckets],
            self.observed[:, :n_buckets],
            self.price[:, :n_buckets],
            self.static,
        )


def bucket_start_ms(buckets: np.ndarray, freq: str) -> np.ndarray:
    """Epoch milliseconds at which each bucket index of ``freq`` begins."""
    return (
        np.asarray(buckets, dtype=np.int64)
        .astype(f"datetime64[{freq}]")
        .astype("datetime64[ms]")
        .astype(np.int64)
    )


def dates_to_buckets(dates: np.ndarray, freq: str) -> np.ndarray:
    """Bucket indices (int64) for an array of ISO date / datetime strings."""
    return np.asarray(dates, dtype="datetime64[ms]").astype(f"datetime64[{freq}]").astype(np.int64)


def infer_frequency(buckets_by_day: np.ndarray) -> str:
    """Guess D / W / M from the sorted distinct day numbers present in a file."""
    days = np.unique(buckets_by_day)
    if days.size < 2:
        return "D"
    gaps = np.diff(days)
    smallest = int(gaps.min())
    if smallest >= 28:
        return "M"
    if smallest >= 7 and np.all(gaps % 7 == 0):
        return "W"
    return "D"


def _open_text(path: Path) -> io.TextIOBase:
    raw = path.open("rb")
    head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if head == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def iter_history_rows(path: str | Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, row)`` for each data line, checking the header first."""
    path = Path(path)
    if not path.exists():
        raise HistoryFormatError(f"{path}: no such file")
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in _REQUIRED if c not in header]
        if missing:
            raise HistoryFormatError(
                f"{path}:1: header must start with item_id,date,qty; missing {', '.join(missing)}"
            )
        for row in reader:
            yield reader.line_num, row


def read_history(path: str | Path, freq: str | None = None) -> History:
    """Parse a history file into a :class:`History`.

    ``freq`` is inferred from the dates when not given. A malformed line raises
    :class:`HistoryFormatError` naming the file and line.
    """
    path = Path(path)
    items: list[str] = []
    dates: list[str] = []
    qtys: list[float] = []
    prices: list[float] = []
    static_rows: dict[str, list[str]] = {}
    static_names: list[str] | None = None
    for line, row in iter_history_rows(path):
        if static_names is None:
            static_names = [c for c in row if c not in (*_REQUIRED, "price") and c is not None]
            static_rows = {c: [] for c in static_names}
        item = (row.get("item_id") or "").strip()
        if not item:
            raise HistoryFormatError(f"{path}:{line}: empty item_id")
        date = (row.get("date") or "").strip()
        try:
            qty = float(row["qty"])
        except (TypeError, ValueError) as exc:
            raise HistoryFormatError(f"{path}:{line}: qty {row.get('qty')!r} is not a number") from exc
        if not np.isfinite(qty) or qty < 0:
            raise HistoryFormatError(f"{path}:{line}: qty must be a finite number >= 0, got {qty}")
        price_text = (row.get("price") or "").strip()
        try:
            price = float(price_text) if price_text else np.nan
        except ValueError as exc:
            raise HistoryFormatError(f"{path}:{line}: price {price_text!r} is not a number") from exc
        if not (np.isnan(price) or (np.isfinite(price) and price >= 0)):
            # The events' contract: a price, when present, is a finite number >= 0.
            raise HistoryFormatError(f"{path}:{line}: price must be a finite number >= 0, got {price_text!r}")
        items.append(item)
        dates.append(date)
        qtys.append(qty)
        prices.append(price)
        for c in static_names:
            static_rows[c].append((row.get(c) or "").strip())
    if not items:
        raise HistoryFormatError(f"{path}: no data rows")
    try:
        days = np.asarray(dates, dtype="datetime64[D]")
    except ValueError:
        # Find the first offending line to name it.
        for i, d in enumerate(dates):
            try:
                np.datetime64(d, "D")
            except ValueError as exc:
                raise HistoryFormatError(f"{path}:{i + 2}: date {d!r} is not an ISO date") from exc
        raise
    if freq is None:
        freq = infer_frequency(days.astype(np.int64))
    if freq not in FREQUENCIES:
        raise HistoryFormatError(f"unknown frequency {freq!r}; expected one of {', '.join(FREQUENCIES)}")
    buckets = days.astype(f"datetime64[{freq}]").astype(np.int64)

    item_arr = np.asarray(items)
    uniq, item_idx = np.unique(item_arr, return_inverse=True)
    first = int(buckets.min())
    n_t = int(buckets.max()) - first + 1
    col = buckets - first
    qty = np.zeros((uniq.size, n_t), dtype=np.float32)
    observed = np.zeros((uniq.size, n_t), dtype=bool)
    price = np.full((uniq.size, n_t), np.nan, dtype=np.float32)
    # Several rows of one item in one bucket (daily rows read as weekly) add up.
    np.add.at(qty, (item_idx, col), np.asarray(qtys, dtype=np.float32))
    observed[item_idx, col] = True
    price[item_idx, col] = np.asarray(prices, dtype=np.float32)

    static: dict[str, np.ndarray] = {}
    for c, values in static_rows.items():
        value_arr = np.asarray(values)
        _, value_idx = np.unique(value_arr, return_inverse=True)
        pairs = np.unique(item_idx.astype(np.int64) * (value_idx.max() + 1) + value_idx)
        if pairs.size != uniq.size:
            # A column that changes within an item (a holiday flag, say) is not a static feature.
            continue
        per_item = np.empty(uniq.size, dtype=object)
        per_item[item_idx] = value_arr
        static[c] = per_item.astype(str)
    return History(uniq.astype(str), freq, first, qty, observed, price, static)
