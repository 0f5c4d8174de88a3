"""Read item attributes (store, category, ...) from the compacted items topic into the static table.

The model's static embeddings are trained on the history file's static columns; at serving time
the same attributes come from the items topic (DESIGN.md: key = item id, a JSON object of
attributes, compacted so that only each item's latest value is kept; a null value forgets the
item). Every instance reads the whole topic, with a consumer of its own outside the group: the
table is small next to the demand state, and any item may be assigned to it after a rebalance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from stream.errors import MqcastError
from stream.inputs import StaticTable

log = logging.getLogger(__name__)


class AttributeFormatError(MqcastError, ValueError):
    """An items-topic record that is not an item id with a JSON object of attributes."""


def decode_attributes(key: bytes | None, value: bytes | None) -> tuple[str, dict[str, object] | None]:
    """The item id and its attributes (None: a tombstone, forget the item) of one record."""
    if not key:
        raise AttributeFormatError("no key: an items record's key is its item id")
    try:
        item = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AttributeFormatError("key is not UTF-8 text") from exc
    if value is None:
        return item, None
    try:
        attributes = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise AttributeFormatError(f"value is not JSON ({exc})") from exc
    if not isinstance(attributes, dict):
        raise AttributeFormatError(
            f"value is a JSON {type(attributes).__name__}, not an object of attributes"
        )
    return item, attributes


@dataclass
class ItemsStats:
    """What the reader has applied so far."""

    updated: int = 0
    forgotten: int = 0
    rejected: int = 0


#: ``(value, key, reason, topic, partition, offset)``: where a bad record goes (the dead letters).
Reject = Callable[[bytes | None, bytes | None, str, str, int, int], None]


class ItemAttributes:
    """Owns the consumer of the items topic and keeps ``statics`` up to date with it."""

    def __init__(
        self, bootstrap: str, topic: str, statics: StaticTable, reject: Reject, client_id: str = "mqcast"
    ) -> None:
        self.topic = topic
        self.statics = statics
        self.reject = reject
        self.stats = ItemsStats()
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=f"{client_id}-items",
            group_id=None,  # no group, no commits: the whole topic is read at every start
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        partitions = self.consumer.partitions_for_topic(topic)
        if not partitions:
            self.consumer.close()
            raise MqcastError(
                f"items topic {topic!r} does not exist on {bootstrap} "
                "(`mqcast topics --items-topic ...` creates it; --items-topic '' serves without attributes)"
            )
        self.partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)

    def catch_up(self, timeout_s: float = 60.0) -> int:
        """Read up to the topic's end as of now (at start, before the first forecast); returns the
        records read. Gives up after ``timeout_s`` with a warning: items not read yet are served as
        unknown until :meth:`poll` reaches them."""
        end = self.consumer.end_offsets(self.partitions)
        deadline = time.monotonic() + timeout_s
        n = 0
        while any(self.consumer.position(tp) < end[tp] for tp in self.partitions):
            if time.monotonic() > deadline:
                log.warning(
                    "items topic %s: not read to its end within %.0f s; going on", self.topic, timeout_s
                )
                break
            n += self.poll(timeout_ms=200)
        log.info("items topic %s: %d item(s) with attributes", self.topic, len(self.statics))
        return n

    def poll(self, timeout_ms: int = 0) -> int:
        """Apply what has arrived (by default without waiting); returns the records read."""
        n = 0
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms).items():
            for rec in records:
                try:
                    item, attributes = decode_attributes(rec.key, rec.value)
                except AttributeFormatError as exc:
                    self.stats.rejected += 1
                    self.reject(rec.value, rec.key, str(exc), tp.topic, tp.partition, rec.offset)
                    continue
                if attributes is None:
                    self.statics.forget(item)
                    self.stats.forgotten += 1
                else:
                    self.statics.update(item, attributes)
                    self.stats.updated += 1
            n += len(records)
        return n

    def close(self) -> None:
        self.consumer.close(autocommit=False)
