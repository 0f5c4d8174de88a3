"""Write forecasts and dead letters, and know when the broker has acknowledged them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson
from kafka import KafkaProducer
from kafka.producer.future import FutureProduceResult

from state.buckets import bucket_start
from stream.bulk_send import send_keyed, unacknowledged
from stream.errors import PublishError
from stream.values_json import scaled_values, values_json

try:
    from stream import _messages as _native
except ImportError:  # built without a C compiler (setup.py): the same messages, written in Python
    _native = None

#: Whether this install writes forecast messages in C (``stream/_messages.c``).
NATIVE_MESSAGES = _native is not None

#: Version of the forecast message contract (DESIGN.md); bump it when a field changes meaning.
FORECAST_SCHEMA = 1

#: The output producer's delivery and batching settings: idempotent, acknowledged by every replica,
#: large batches after a short linger. The service uses them, and the benches that compare against
#: the bare client give it the same.
PRODUCER_SETTINGS: dict[str, object] = {
    "enable_idempotence": True,
    "acks": "all",
    "linger_ms": 5,
    "batch_size": 256 * 1024,
    "compression_type": None,
}


@dataclass(frozen=True)
class ForecastFormat:
    """The parts of every forecast message that come from the model, encoded once."""

    freq: str
    model_version: str
    quantiles: tuple[float, ...]
    horizons: int


def iso_ms(ms: int) -> str:
    """RFC 3339 UTC text of epoch milliseconds."""
    return str(np.datetime64(int(ms), "ms")) + "Z"


def encode_forecasts(
    fmt: ForecastFormat, item_ids: Sequence[str], origin: int, values: np.ndarray, produced_ms: int
) -> list[bytes]:
    """JSON forecast messages (DESIGN.md contract) for the items of one origin bucket; ``values``
    [N, H, Q] are published rounded to thousandths (:func:`stream.values_json.values_json`).

    Written in C where the extension was built (:data:`NATIVE_MESSAGES`), otherwise in Python: the
    same bytes either way, the C path about five times faster.
    """
    origin_ms = int(bucket_start(origin, fmt.freq))
    common = {
        "schema": FORECAST_SCHEMA,
        "origin": iso_ms(origin_ms),
        "origin_ms": origin_ms,
        "bucket": fmt.freq,
        "model_version": fmt.model_version,
        "quantiles": list(fmt.quantiles),
        "horizons": list(range(1, fmt.horizons + 1)),
        "produced_at": iso_ms(produced_ms),
    }
    # Everything but the item and its values is the same for the whole batch: encode it once and
    # splice it into each message (this is a hot path: one message per item and bucket).
    middle = b"," + orjson.dumps(common)[1:-1] + b',"values":'
    if len(item_ids) != len(values):
        raise ValueError(f"{len(item_ids)} items but {len(values)} rows of values")
    if _native is not None:
        messages, left = _native.messages(item_ids, middle, scaled_values(values), *values.shape[1:])
        # The rows C leaves (ids that need escaping, values orjson must write) take the Python path.
        for i, text in zip(left, values_json(values[left]), strict=True):
            messages[i] = _message(item_ids[i], middle, text)
        return messages
    return [_message(item, middle, text) for item, text in zip(item_ids, values_json(values), strict=True)]


def _message(item: str, middle: bytes, text: bytes) -> bytes:
    # One join per message (not four concatenations): each copies the whole message once.
    return b"".join((b'{"item_id":', orjson.dumps(item), middle, text, b"}"))


class Publisher:
    """Owns the idempotent producer of forecasts and dead letters.

    Sends are asynchronous; :meth:`flush` waits for every acknowledgement and raises if any send
    failed, so the caller commits input offsets only for output the broker really has.
    """

    def __init__(self, producer: KafkaProducer, forecast_topic: str, dead_letter_topic: str) -> None:
        self.producer = producer
        self.forecast_topic = forecast_topic
        self.dead_letter_topic = dead_letter_topic
        self._futures: list = []

    def forecasts(self, item_ids: Sequence[str], messages: list[bytes]) -> list[FutureProduceResult]:
        """Send one message per item, keyed by item id (its UTF-8; so an item's forecasts stay in
        order).

        Each goes to the partition Kafka's default partitioner would choose for its key, hashed
        for the whole batch at once, and all are appended at once
        (:func:`stream.bulk_send.send_keyed`). Returns, per output partition, a future that
        completes when the broker has acknowledged all of this call's messages there.
        """
        if len(item_ids) != len(messages):
            raise ValueError(f"{len(item_ids)} items but {len(messages)} messages")
        # The ids themselves are the keys: the C paths read a str's UTF-8 where CPython keeps it.
        keys = item_ids.tolist() if isinstance(item_ids, np.ndarray) else item_ids
        appended = send_keyed(self.producer, self.forecast_topic, keys, messages)
        for a in appended:
            self._futures.extend(a.batches)
        return [a.last for a in appended]

    def dead_letter(
        self, value: bytes | None, key: bytes | None, reason: str, topic: str, partition: int, offset: int
    ) -> None:
        """Send a rejected input message, unchanged, with why and where it came from in headers."""
        headers = [
            ("mqcast.reason", reason.encode("utf-8")),
            ("mqcast.source.topic", topic.encode("utf-8")),
            ("mqcast.source.partition", str(partition).encode()),
            ("mqcast.source.offset", str(offset).encode()),
            ("mqcast.rejected_at", str(int(time.time() * 1000)).encode()),
        ]
        self._futures.append(
            self.producer.send(self.dead_letter_topic, value=value, key=key, headers=headers)
        )

    def track(self, futures: list) -> None:
        """Have :meth:`flush` check other sends of this producer too (state snapshots)."""
        self._futures.extend(futures)

    def discard(self) -> None:
        """Forget sends of an aborted transaction (they will never be acknowledged as committed)."""
        self._futures = []

    @property
    def in_flight(self) -> int:
        return len(self._futures)

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait for every send so far to be acknowledged; returns how many were. Raises on failure."""
        futures, self._futures = self._futures, []
        if not futures:
            return 0
        try:
            self.producer.flush(timeout=timeout_s)
        except Exception as exc:
            raise PublishError(f"producer did not drain {len(futures)} messages within {timeout_s}s") from exc
        if unacknowledged(futures):
            # A record batch the broker refused as too large is split and re-sent as new batches
            # this call does not hold; refuse to call them acknowledged.
            raise PublishError(
                "a batch of messages was split by the producer after the broker refused it as too large; "
                "raise the topic's max.message.bytes above the producer's batch size"
            )
        return len(futures)
