"""Read mqcast's forecasts from Kafka and print them, or append them to a CSV file.

A downstream consumer in miniature: it needs only kafka-python and orjson (both mqcast
dependencies), not mqcast itself. Each message on the forecast topic is one item's quantile fan
made at one origin bucket (see "Forecast message schema" in the README):

    python examples/forecast_client.py --from-beginning --max-messages 20
    python examples/forecast_client.py --item 85123A --item 22423 --horizons 7
    python examples/forecast_client.py --from-beginning --csv forecasts.csv --idle-timeout 30

Without ``--group`` the client reads every partition on its own and commits nothing, so it can be
run any number of times; with ``--group`` instances share the partitions and remember their place.
It stops after ``--max-messages``, after ``--idle-timeout`` seconds without a message, or on Ctrl-C,
always closing the consumer and the CSV file cleanly.
"""

from __future__ import annotations

import argparse
import calendar
import csv
import os
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import orjson

#: The forecast message contract this client understands (the message's ``schema`` field).
SUPPORTED_SCHEMA = 1

_FIXED_COLUMNS = ("item_id", "origin", "bucket", "horizon", "target", "model_version", "produced_at")


def quantile_label(q: float) -> str:
    """``0.1`` -> ``"P10"``, ``0.975`` -> ``"P97.5"``."""
    return f"P{round(q * 100, 6):g}"


def parse_message(value: bytes) -> dict[str, Any]:
    """Decode one forecast message, checking the fields this client relies on.

    Raises ValueError for anything that is not a forecast of a supported schema version, so a
    caller can skip it and go on.
    """
    try:
        msg = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(msg, dict):
        raise ValueError("not a JSON object")
    if msg.get("schema") != SUPPORTED_SCHEMA:
        raise ValueError(f"schema {msg.get('schema')!r}, this client reads schema {SUPPORTED_SCHEMA}")
    missing = [k for k in ("item_id", "origin", "bucket", "quantiles", "horizons", "values") if k not in msg]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    if len(msg["values"]) != len(msg["horizons"]) or any(
        len(row) != len(msg["quantiles"]) for row in msg["values"]
    ):
        raise ValueError("values is not [horizons][quantiles]")
    return msg


def target_start(origin: str, bucket: str, horizon: int) -> str:
    """Start (RFC 3339, UTC) of the bucket that horizon ``horizon`` of a forecast targets.

    ``origin`` is the start of the last closed bucket; horizon h is the bucket h units later.
    Months are calendar months, so they are counted on the calendar rather than as a duration.
    """
    start = datetime.fromisoformat(origin.replace("Z", "+00:00"))
    if bucket == "M":
        month0 = start.month - 1 + horizon
        year, month = start.year + month0 // 12, month0 % 12 + 1
        day = min(start.day, calendar.monthrange(year, month)[1])
        target = start.replace(year=year, month=month, day=day)
    else:
        step = {"h": timedelta(hours=1), "D": timedelta(days=1), "W": timedelta(weeks=1)}.get(bucket)
        if step is None:
            raise ValueError(f"unknown bucket unit {bucket!r}")
        target = start + horizon * step
    return target.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{target.microsecond // 1000:03d}Z"


def format_line(msg: dict[str, Any], horizons: int = 3) -> str:
    """One readable line: item, origin, model version and the quantiles of the first horizons."""
    labels = [quantile_label(q) for q in msg["quantiles"]]
    fans = []
    for h, row in list(zip(msg["horizons"], msg["values"], strict=True))[:horizons]:
        fans.append(f"h{h} " + " ".join(f"{lab}={v:.1f}" for lab, v in zip(labels, row, strict=True)))
    more = len(msg["horizons"]) - len(fans)
    tail = f" | (+{more} more)" if more > 0 else ""
    return (
        f"{msg['item_id']:<12} origin {msg['origin']} ({msg['bucket']})  "
        f"model {msg.get('model_version', '?')}  " + " | ".join(fans) + tail
    )


def csv_header(quantiles: Sequence[float]) -> list[str]:
    """Column names of the CSV rows: the fixed columns, then one per quantile (``p10``, ...)."""
    return [*_FIXED_COLUMNS, *(quantile_label(q).lower() for q in quantiles)]


def csv_rows(msg: dict[str, Any]) -> list[list[Any]]:
    """One CSV row per horizon of a forecast message, columns as in :func:`csv_header`."""
    rows = []
    for h, row in zip(msg["horizons"], msg["values"], strict=True):
        rows.append(
            [
                msg["item_id"],
                msg["origin"],
                msg["bucket"],
                h,
                target_start(msg["origin"], msg["bucket"], h),
                msg.get("model_version", ""),
                msg.get("produced_at", ""),
                *row,
            ]
        )
    return rows


class CsvSink:
    """Appends forecast rows to a CSV file, writing the header only into an empty file.

    The quantile columns are fixed by the file's header (or by the first message of a new file); a
    message with other quantile levels (a model trained with other ``--quantiles``) is refused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header: list[str] | None = None
        if path.exists() and path.stat().st_size > 0:
            with path.open(newline="", encoding="utf-8") as fh:
                self.header = next(csv.reader(fh), None)
        self._fh: TextIO = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)
        self.rows = 0

    def write(self, msg: dict[str, Any]) -> None:
        """Append the rows of one message; raises ValueError if its quantiles do not fit the file."""
        header = csv_header(msg["quantiles"])
        if self.header is None:
            self._writer.writerow(header)
            self.header = header
        elif header != self.header:
            raise ValueError(
                f"quantiles {msg['quantiles']} do not match the columns of {self.path} ({self.header})"
            )
        rows = csv_rows(msg)
        self._writer.writerows(rows)
        self.rows += len(rows)

    def flush(self) -> None:
        """Push the rows written so far to the file."""
        self._fh.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._fh.close()


def wanted(key: bytes | None, msg_item: str | None, items: set[str]) -> bool:
    """Whether a message passes the ``--item`` filter (no filter: every message)."""
    if not items:
        return True
    if key is not None:
        return key.decode("utf-8", "replace") in items
    return msg_item in items


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of this client."""
    p = argparse.ArgumentParser(
        description="Print mqcast forecasts from Kafka, one line each, or append them to a CSV file.",
    )
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("MQCAST_BOOTSTRAP", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $MQCAST_BOOTSTRAP or 127.0.0.1:9092)",
    )
    p.add_argument("--topic", default="forecasts", help="forecast topic (default: forecasts)")
    p.add_argument(
        "--group",
        default=None,
        help="consumer group to join and commit to (default: none, read all partitions, commit nothing)",
    )
    p.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest forecast (with --group: only where the group has no committed offset)",
    )
    p.add_argument(
        "--item", action="append", default=[], metavar="ITEM_ID", help="only this item (repeatable)"
    )
    p.add_argument("--csv", type=Path, metavar="OUT", help="append one row per horizon to this CSV file")
    p.add_argument(
        "--max-messages",
        type=_non_negative_int,
        default=0,
        help="stop after this many forecasts (0: no limit)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="stop after this many seconds without a new message (0: wait for more)",
    )
    p.add_argument(
        "--horizons", type=_non_negative_int, default=3, help="horizons shown per line (default: 3)"
    )
    return p


def _consumer(args: argparse.Namespace) -> Any:
    """A KafkaConsumer positioned as the arguments ask (kafka is imported here, not at load)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        client_id="mqcast-forecast-client",
        # Offsets are committed by hand, for the records really handled (see _Progress).
        enable_auto_commit=False,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        # With `--exactly-once on` the service writes forecasts in transactions: read only
        # committed ones. Without transactions this changes nothing.
        isolation_level="read_committed",
    )
    if args.group is not None:
        consumer.subscribe([args.topic])
        return consumer
    # Without a group there is no partition assignment: take every partition ourselves.
    partitions = consumer.partitions_for_topic(args.topic)
    if not partitions:
        consumer.close()
        raise SystemExit(f"topic {args.topic!r} not found on {args.bootstrap}")
    tps = [TopicPartition(args.topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    if args.from_beginning:
        consumer.seek_to_beginning(*tps)
    else:
        consumer.seek_to_end(*tps)
    return consumer


def _records(consumer, idle_timeout: float) -> Iterable:
    """Yield records until ``idle_timeout`` seconds pass without one (never, when it is 0)."""
    last = time.monotonic()
    while True:
        # A bounded poll, so the idle timeout and Ctrl-C are noticed at least once a second.
        batch = consumer.poll(timeout_ms=1000)
        if not batch:
            if idle_timeout and time.monotonic() - last >= idle_timeout:
                return
            continue
        last = time.monotonic()
        for records in batch.values():
            yield from records


class _Progress:
    """What has been handled, and committing exactly that for a consumer group.

    Auto-commit would commit the consumer's position, which is past every record a poll returned,
    including those not handled yet when the client stops at ``--max-messages``; the next run with
    the same group would then miss them. So offsets are committed by hand, one past the last
    record handled on each partition.
    """

    def __init__(self, consumer: Any, group: str | None, every_s: float = 5.0) -> None:
        self.consumer = consumer
        self.group = group
        self.every_s = every_s
        self._next: dict[tuple[str, int], int] = {}
        self._last_commit = time.monotonic()

    def done(self, rec: Any) -> None:
        """``rec`` is handled (shown, stored, filtered out or skipped)."""
        self._next[(rec.topic, rec.partition)] = rec.offset + 1

    def due(self) -> bool:
        """Whether a periodic commit is due (never without a group)."""
        return self.group is not None and time.monotonic() - self._last_commit >= self.every_s

    def commit(self) -> None:
        """Commit the handled offsets for the group (nothing without one)."""
        self._last_commit = time.monotonic()
        if self.group is None or not self._next:
            return
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in self._next.items()}
        try:
            self.consumer.commit(offsets)
        except Exception as exc:  # a rebalance or a broker error: the next run re-reads a little
            print(f"could not commit offsets: {exc!r}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client; returns the process exit status."""
    args = build_parser().parse_args(argv)
    items = set(args.item)
    consumer = _consumer(args)
    progress = _Progress(consumer, args.group)
    sink: CsvSink | None = None
    seen = skipped = 0

    def skip(rec: Any, why: object) -> None:
        nonlocal skipped
        skipped += 1
        print(f"skipped {rec.topic}[{rec.partition}]@{rec.offset}: {why}", file=sys.stderr)

    def handle(rec: Any) -> bool:
        """Show or store one record; True when it was a wanted forecast."""
        if items and rec.key is not None and not wanted(rec.key, None, items):
            return False  # filtered on the key, without decoding the message
        try:
            msg = parse_message(rec.value)
        except ValueError as exc:
            skip(rec, exc)
            return False
        if not wanted(None, msg["item_id"], items):
            return False
        if sink is None:
            print(format_line(msg, args.horizons), flush=True)
            return True
        try:
            sink.write(msg)
        except ValueError as exc:
            skip(rec, exc)
            return False
        return True

    try:
        sink = CsvSink(args.csv) if args.csv else None
        for rec in _records(consumer, args.idle_timeout):
            if progress.due():
                if sink is not None:
                    sink.flush()  # rows on disk before their offsets are committed
                progress.commit()
            seen += handle(rec)
            # Marked only once handled, so a crash in between re-reads the record next time.
            progress.done(rec)
            if args.max_messages and seen >= args.max_messages:
                break
    except KeyboardInterrupt:
        pass  # Ctrl-C: stop reading and close everything below, like a normal end.
    finally:
        if sink is not None:
            sink.close()
        progress.commit()
        consumer.close()
    where = f", {sink.rows} rows appended to {sink.path}" if sink is not None else ""
    print(f"{seen} forecasts read, {skipped} skipped{where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
