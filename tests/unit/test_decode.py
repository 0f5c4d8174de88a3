"""Decoding and validation of sales events."""

from __future__ import annotations

import math

import numpy as np
import orjson

from stream.decode import decode_events


def _ev(**kw) -> bytes:
    return orjson.dumps({"item_id": "A1", "ts": 1_300_000_000_000, "qty": 2, **kw})


def test_valid_events_become_columns():
    batch = decode_events([_ev(), _ev(item_id="B", ts="2011-01-02T03:04:05Z", qty=1.5, price=2.5, extra=1)])
    assert list(batch.item_ids) == ["A1", "B"]
    assert batch.event_ms.tolist() == [1_300_000_000_000, 1_293_937_445_000]
    assert batch.qty.tolist() == [2.0, 1.5]
    assert math.isnan(batch.price[0]) and batch.price[1] == 2.5
    assert batch.invalid == []


def test_rfc3339_offsets_and_naive_times():
    batch = decode_events([_ev(ts="2011-01-02T04:04:05+01:00"), _ev(ts="2011-01-02 03:04:05")])
    assert batch.event_ms.tolist() == [1_293_937_445_000, 1_293_937_445_000]


def test_each_bad_event_gets_its_reason_and_position():
    values = [
        b"{not json",
        None,
        b"[1, 2]",
        _ev(item_id=""),
        _ev(qty=-1),
        _ev(qty="3"),
        _ev(qty=True),
        _ev(ts="yesterday"),
        _ev(ts=None),
        _ev(price=-2),
        _ev(),
    ]
    batch = decode_events(values)
    reasons = dict(batch.invalid)
    assert sorted(reasons) == list(range(10))
    assert "malformed JSON" in reasons[0]
    assert "empty" in reasons[1]
    assert "object" in reasons[2]
    assert "item_id" in reasons[3]
    assert ">= 0" in reasons[4]
    assert "qty" in reasons[5] and "qty" in reasons[6]
    assert "RFC 3339" in reasons[7] and "ts" in reasons[8]
    assert "price" in reasons[9]
    np.testing.assert_array_equal(batch.positions, [10])


def test_nan_and_infinite_quantities_are_rejected():
    batch = decode_events([b'{"item_id":"a","ts":1,"qty":1e999}'])
    assert len(batch) == 0 and "infinity" in batch.invalid[0][1]
