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


def _same(a, b) -> None:
    assert list(a.item_ids) == list(b.item_ids)
    assert a.event_ms.tolist() == b.event_ms.tolist() and a.positions.tolist() == b.positions.tolist()
    np.testing.assert_array_equal(a.qty, b.qty)
    np.testing.assert_array_equal(a.price, b.price)  # NaN where absent, in both
    assert a.invalid == b.invalid


def test_clean_batches_take_the_column_path_and_agree_with_the_per_event_path():
    from stream.decode import TimestampCache, _decode_clean, _decode_each

    rng = np.random.default_rng(7)
    for ts_kind in ("int", "float", "str"):
        values = []
        for i in range(500):
            t = 1_300_000_000_000 + int(rng.integers(0, 10**9))
            ts = {"int": t, "float": t + 0.25, "str": f"2011-03-{1 + i % 28:02d}T10:00:00Z"}[ts_kind]
            event = {"item_id": f"sku-{rng.integers(0, 50)}", "ts": ts, "qty": float(rng.integers(0, 5)) / 2}
            if i % 3:
                event["price"] = round(float(rng.uniform(0, 9)), 2) if i % 7 else 0
            values.append(orjson.dumps(event))
        assert _decode_clean(values, TimestampCache()) is not None
        _same(decode_events(values), _decode_each(values, TimestampCache()))


def test_one_bad_event_in_a_large_batch_is_found_with_its_reason():
    from stream.decode import TimestampCache, _decode_clean

    good = [_ev(item_id=f"i{k}", price=1.0) for k in range(100)]
    cases = [
        (b'{"item_id": "x", "ts": 1, "qty": 1e400}', "malformed JSON"),
        (_ev(qty=True), "qty must be a finite number"),
        (_ev(qty=-1), "qty must be >= 0"),
        (_ev(item_id=""), "item_id must be a non-empty string"),
        (_ev(ts=True), "ts must be an RFC 3339 string or epoch milliseconds"),
        (_ev(ts=-5), "out of range"),
        (_ev(price=-1), "price must be a finite number >= 0"),
        (b"[1, 2]", "event must be a JSON object"),
        (b"", "empty message value"),
        (None, "empty message value"),
    ]
    for bad, reason in cases:
        values = [*good[:50], bad, *good[50:]]
        assert _decode_clean(values, TimestampCache()) is None
        batch = decode_events(values)
        assert len(batch) == 100 and 50 not in batch.positions.tolist()
        assert [pos for pos, _ in batch.invalid] == [50] and reason in batch.invalid[0][1], (
            bad,
            batch.invalid,
        )
