"""Turn a file into sales events on a topic, in event-time order, at a chosen speed.

Three inputs are understood, told apart by their header:

* a history file (``item_id,date,qty[,price]...``): one event per row with a sale, at the start of
  its bucket (days without a row or with zero demand are zero-filled by the service anyway);
* an events file (``item_id,ts,qty[,price]``): one event per row, ``ts`` as RFC 3339 or epoch ms;
* the Online Retail invoice lines (``InvoiceNo,StockCode,Quantity,InvoiceDate,UnitPrice,...``): one
  event per line, cancellations included (their negative quantity sends them to the dead-letter topic).
"""

from __future__ import annotations

import csv
import gzip
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from kafka import KafkaProducer
from kafka.producer.future import FutureProduceResult
from tqdm import tqdm

from model.history import read_history
from stream.bulk_send import send_keyed, unacknowledged
from stream.errors import MqcastError, PublishError


class ReplayFormatError(MqcastError, ValueError):
    """The file to replay is in none of the understood formats, or has a bad line."""


@dataclass
class EventColumns:
    """Events to replay, sorted by time."""

    item_ids: np.ndarray  # object [n]
    event_ms: np.ndarray  # int64 [n]
    qty: np.ndarray  # float64 [n]
    price: np.ndarray  # float64 [n], NaN when absent
    event_ids: np.ndarray | None = None  # object [n]
    #: A history file's static columns, item id -> {column: value}, for the items topic.
    attributes: dict[str, dict[str, str]] | None = None

    def __len__(self) -> int:
        return int(self.event_ms.shape[0])

    def slice(self, start: int, stop: int) -> EventColumns:
        ids = None if self.event_ids is None else self.event_ids[start:stop]
        return EventColumns(
            self.item_ids[start:stop],
            self.event_ms[start:stop],
            self.qty[start:stop],
            self.price[start:stop],
            ids,
            self.attributes,
        )


def _open(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _floats(values: list[str], path: Path, column: str, first_line: int = 2) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v) if v.strip() else np.nan
        except ValueError as exc:
            raise ReplayFormatError(f"{path}:{first_line + i}: {column} {v!r} is not a number") from exc
    return out


def _times_ms(values: list[str], path: Path) -> np.ndarray:
    """Epoch milliseconds of RFC 3339 texts or of epoch-millisecond numbers."""
    arr = np.asarray(values)
    # numpy would read a bare number as a year, so numbers are told apart first.
    if arr.size and np.char.isdigit(arr).all():
        return arr.astype(np.int64)
    try:
        return np.asarray([v.rstrip("Z") for v in values], dtype="datetime64[ms]").astype(np.int64)
    except ValueError:
        pass
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        try:
            out[i] = int(v) if v.isdigit() else np.datetime64(v.rstrip("Z"), "ms").astype(np.int64)
        except ValueError as exc:
            raise ReplayFormatError(f"{path}:{i + 2}: time {v!r} is neither RFC 3339 nor epoch ms") from exc
    return out


def load_events(path: str | Path) -> EventColumns:
    """Read any of the understood formats into time-sorted event columns."""
    path = Path(path)
    if not path.exists():
        raise ReplayFormatError(f"{path}: no such file")
    with _open(path) as fh:
        header = next(csv.reader(fh), [])
    if {"item_id", "date", "qty"} <= set(header):
        return _from_history(path)
    with _open(path) as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    if {"InvoiceNo", "StockCode", "Quantity", "InvoiceDate"} <= set(header):
        items = np.array([r["StockCode"].strip().upper() for r in rows], dtype=object)
        ms = _times_ms([r["InvoiceDate"] for r in rows], path)
        qty = _floats([r["Quantity"] for r in rows], path, "Quantity")
        price = _floats([r.get("UnitPrice") or "" for r in rows], path, "UnitPrice")
        ids = np.array([f"{r['InvoiceNo']}:{i}" for i, r in enumerate(rows)], dtype=object)
    elif {"item_id", "ts", "qty"} <= set(header):
        items = np.array([r["item_id"] for r in rows], dtype=object)
        ms = _times_ms([r["ts"] for r in rows], path)
        qty = _floats([r["qty"] for r in rows], path, "qty")
        price = _floats([r.get("price") or "" for r in rows], path, "price")
        ids = (
            np.array([r.get("event_id") or "" for r in rows], dtype=object) if "event_id" in header else None
        )
    else:
        raise ReplayFormatError(
            f"{path}:1: header {','.join(header)!r} is neither a history file (item_id,date,qty,...), "
            "an events file (item_id,ts,qty,...) nor Online Retail invoice lines"
        )
    order = np.argsort(ms, kind="stable")
    return EventColumns(
        items[order], ms[order], qty[order], price[order], None if ids is None else ids[order]
    )


def _from_history(path: Path) -> EventColumns:
    hist = read_history(path)
    starts = hist.bucket_start_ms()
    item_idx, col = np.nonzero(hist.observed & (hist.qty > 0))
    order = np.lexsort((item_idx, col))
    item_idx, col = item_idx[order], col[order]
    return EventColumns(
        hist.item_ids[item_idx].astype(object),
        starts[col],
        hist.qty[item_idx, col].astype(np.float64),
        hist.price[item_idx, col].astype(np.float64),
        attributes={
            str(item): {c: str(v[i]) for c, v in hist.static.items()} for i, item in enumerate(hist.item_ids)
        }
        if hist.static
        else None,
    )


def encode_event(item: str, ms: int, qty: float, price: float, event_id: str | None) -> bytes:
    """One sales event in the DESIGN.md contract (epoch-ms time)."""
    event: dict[str, object] = {"item_id": item, "ts": ms, "qty": qty}
    if price == price:  # not NaN
        event["price"] = price
    if event_id:
        event["event_id"] = event_id
    return orjson.dumps(event)


def send_attributes(producer: KafkaProducer, topic: str, attributes: dict[str, dict[str, str]]) -> int:
    """Send each item's attributes to the (compacted) items topic, keyed by item id, and wait for
    the acknowledgements; returns how many were sent."""
    items = list(attributes)
    values = [orjson.dumps(attributes[item]) for item in items]
    pending: list[FutureProduceResult] = []
    for appended in send_keyed(producer, topic, items, values):  # keyed by the ids' UTF-8
        pending.extend(appended.batches)
    producer.flush()
    if unacknowledged(pending):
        raise PublishError(f"the producer gave up before the broker acknowledged every item of {topic!r}")
    return len(items)


def replay(
    events: EventColumns,
    producer: KafkaProducer,
    topic: str,
    speed: float = 0.0,
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Send the events keyed by item id; ``speed`` > 0 keeps event-time gaps divided by it.

    Returns the number of events sent (all acknowledged: the producer is flushed at the end;
    a failed send raises :class:`stream.errors.PublishError`).
    """
    n = len(events)
    ids = events.event_ids
    t0_event = int(events.event_ms[0]) if n else 0
    t0_wall = clock()
    sent = 0
    pending: list[FutureProduceResult] = []
    with tqdm(total=n, unit="ev", disable=not progress, desc="replay") as bar:
        for start in range(0, n, 1000):
            if stop is not None and stop():
                break
            stop_i = min(start + 1000, n)
            if speed > 0:
                due = (int(events.event_ms[start]) - t0_event) / 1000.0 / speed
                ahead = due - (clock() - t0_wall)
                if ahead > 0:
                    sleep(ahead)
            items = events.item_ids[start:stop_i].tolist()
            ms = events.event_ms[start:stop_i].tolist()
            qty = events.qty[start:stop_i].tolist()
            price = events.price[start:stop_i].tolist()
            eid = ids[start:stop_i].tolist() if ids is not None else [None] * (stop_i - start)
            values = [encode_event(*event) for event in zip(items, ms, qty, price, eid, strict=True)]
            # One bulk append for the chunk, keyed by the ids' UTF-8 (a send per event cost about
            # 25 us, a quarter of a core at 10k events/s); failures surface as the chunks go.
            for appended in send_keyed(producer, topic, items, values):
                pending.extend(appended.batches)
            pending = unacknowledged(pending)
            sent += stop_i - start
            bar.update(stop_i - start)
    producer.flush()
    if unacknowledged(pending):
        raise PublishError("the producer gave up before the broker acknowledged every event")
    return sent
