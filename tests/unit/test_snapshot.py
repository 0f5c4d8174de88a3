"""A restored snapshot continues exactly like state that never stopped."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from state.config import StateConfig
from state.errors import SnapshotError
from state.partition import PartitionState
from state.snapshot import restore, snapshot

DAY = 86_400_000


def _stream(seed: int = 3, n: int = 600):
    rng = np.random.default_rng(seed)
    ms = np.sort(rng.integers(0, 25 * DAY, n)) + rng.integers(-3_600_000, 3_600_000, n)
    items = np.array([f"item-{k}" for k in rng.integers(0, 40, n)], dtype=object)
    return items, ms, rng.integers(0, 6, n).astype(float), rng.uniform(1, 9, n)


def _drive(state: PartitionState, batch, rng) -> list:
    out = []
    state.ingest(*batch)
    while state.closable() is not None:
        c = state.close_next()
        vals = np.sort(rng.uniform(0, 5, (c.rows.size, state.cfg.horizons, 3)).astype(np.float32), axis=-1)
        state.record_forecasts(c.bucket, c.rows, vals)
        out.append((c.bucket, list(c.item_ids), c.target.copy(), c.feedback.copy(), c.price.copy()))
    return out


def _cfg() -> StateConfig:
    return StateConfig(context_length=7, horizons=3, allowed_lateness_ms=3_600_000, initial_capacity=4)


@pytest.mark.parametrize("previous", [False, True])
def test_snapshot_restore_continues_identically(previous):
    cfg = dataclasses.replace(_cfg(), feedback_previous=previous)
    items, ms, qty, price = _stream()
    cut = 317

    def batches(lo, hi, step=50):
        return [
            (
                items[a : min(a + step, hi)],
                ms[a : min(a + step, hi)],
                qty[a : min(a + step, hi)],
                price[a : min(a + step, hi)],
            )
            for a in range(lo, hi, step)
        ]

    ref = PartitionState(cfg)
    rng = np.random.default_rng(0)
    ref_out = [x for b in batches(0, len(ms)) for x in _drive(ref, b, rng)]

    first = PartitionState(cfg)
    rng = np.random.default_rng(0)
    out = [x for b in batches(0, cut) for x in _drive(first, b, rng)]
    restored, offset = restore(snapshot(first, cut), cfg)
    assert offset == cut
    # The previous forecasts, rebuilt from the ledger, are those the state held.
    n = first.n_items
    np.testing.assert_array_equal(restored.ledger.feedback[:n], first.ledger.feedback[:n])
    out += [x for b in batches(cut, len(ms)) for x in _drive(restored, b, rng)]

    assert len(out) == len(ref_out) > 10
    for (b1, i1, t1, f1, p1), (b2, i2, t2, f2, p2) in zip(out, ref_out, strict=True):
        assert b1 == b2 and i1 == i2
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(p1, p2)


def test_feedback_carries_over_to_a_model_with_another_window():
    """A restart with a model that keeps more (or fewer) scored buckets keeps what both hold."""
    items, ms, qty, price = _stream()
    short = PartitionState(dataclasses.replace(_cfg(), feedback_window=1))
    _drive(short, (items, ms, qty, price), np.random.default_rng(0))
    data = snapshot(short, len(ms))
    n = short.n_items
    longer, _ = restore(data, dataclasses.replace(_cfg(), feedback_window=3))
    np.testing.assert_array_equal(longer.ledger.feedback[:n, :12], short.ledger.feedback[:n])
    assert not longer.ledger.feedback[:n, 12:].any() and short.ledger.feedback[:n, 6].any()
    none, _ = restore(data, _cfg())
    np.testing.assert_array_equal(none.ledger.feedback[:n], short.ledger.feedback[:n, :6])


def test_snapshot_of_other_configuration_is_refused():
    s = PartitionState(_cfg())
    s.ingest(*(x[:10] for x in _stream()))
    data = snapshot(s, 10)
    with pytest.raises(SnapshotError, match="context"):
        restore(data, StateConfig(context_length=8, horizons=3))
    with pytest.raises(SnapshotError, match="unreadable"):
        restore(b"garbage", _cfg())


def _same_state(a: PartitionState, b: PartitionState) -> None:
    n = a.n_items
    assert b.n_items == n and list(b.ids[:n]) == list(a.ids[:n]) and b.index == a.index
    for name in ("qty", "price", "first_bucket", "last_sale", "last_price"):
        np.testing.assert_array_equal(getattr(b, name)[:n], getattr(a, name)[:n])
    for name in ("forecasts", "origin", "feedback"):
        np.testing.assert_array_equal(getattr(b.ledger, name)[:n], getattr(a.ledger, name)[:n])
    assert sorted(b.open) == sorted(a.open)
    for k in a.open:
        np.testing.assert_array_equal(b.open[k].qty[:n], a.open[k].qty[:n])
        np.testing.assert_array_equal(b.open[k].amount[:n], a.open[k].amount[:n])
    assert (b.next_close, b.max_event_ms) == (a.next_close, a.max_event_ms)


@pytest.mark.parametrize("chunk", [1, 777, 4096, 10**9])
def test_a_snapshot_restores_from_its_changelog_chunks_as_from_the_whole(chunk):
    """The changelog hands a restore its chunks as they came; they are read where they lie."""
    items, ms, qty, price = _stream()
    s = PartitionState(_cfg())
    _drive(s, (items[:400], ms[:400], qty[:400], price[:400]), np.random.default_rng(0))
    data = snapshot(s, 400)
    parts = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    whole, offset = restore(data, _cfg())
    assert offset == 400
    _same_state(s, whole)
    chunked, offset = restore(parts, _cfg())
    assert offset == 400
    _same_state(s, chunked)


def test_an_empty_partition_restores_empty():
    s = PartitionState(_cfg())
    restored, offset = restore(snapshot(s, 0), _cfg())
    assert offset == 0 and restored.n_items == 0 and not restored.open


def test_a_snapshot_missing_its_last_chunk_is_refused_not_half_restored():
    s = PartitionState(_cfg())
    s.ingest(*(x[:200] for x in _stream()))
    data = snapshot(s, 200)
    parts = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    with pytest.raises(SnapshotError, match="unreadable"):
        restore(parts[:-1], _cfg())
