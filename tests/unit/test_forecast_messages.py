"""Forecast messages: the contract's fields, and values published rounded to thousandths."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

import stream.publish
from model.metrics import as_published
from stream.publish import NATIVE_MESSAGES, ForecastFormat, encode_forecasts
from stream.values_json import DECIMALS, values_json

FMT = ForecastFormat("D", "m-1", (0.1, 0.5, 0.9), 4)


def _decoded(texts: list[bytes]) -> list[np.ndarray]:
    return [np.array(orjson.loads(t), dtype=np.float64) for t in texts]


def _assert_published_as_rounded(values: np.ndarray, texts: list[bytes]) -> None:
    assert len(texts) == len(values)
    for got, row in zip(_decoded(texts), values, strict=True):
        assert got.shape == row.shape
        np.testing.assert_array_equal(np.isnan(got), np.isnan(row))
        np.testing.assert_array_equal(got[~np.isnan(got)], as_published(row)[~np.isnan(row)])


def test_values_are_published_rounded_to_thousandths():
    rng = np.random.default_rng(0)
    values = rng.gamma(0.7, 20.0, size=(300, 4, 3)).astype(np.float32)
    # float32 0.0005 is a little above it: 0.001.
    values[0] = [[0.0, 0.0004, 0.0005], [0.0015, 1.0, 2.5], [10.05, 99.999, 100.0], [123.4567, 999.9994, 7.0]]
    texts = values_json(values)
    _assert_published_as_rounded(values, texts)
    assert texts[0] == b"[[0.0,0.0,0.001],[0.002,1.0,2.5],[10.05,99.999,100.0],[123.457,999.999,7.0]]"
    assert DECIMALS == 3


def test_whole_numbers_stay_floats_for_json_readers():
    (text,) = values_json(np.array([[[0.0, 3.0, 12.0]]], dtype=np.float32))
    assert text == b"[[0.0,3.0,12.0]]"
    assert all(isinstance(v, float) for v in orjson.loads(text)[0])


@pytest.mark.parametrize("odd", [1000.0, 999.9996, 25_431.77, -0.25, float("nan")])
def test_a_value_outside_the_table_is_formatted_alone_with_the_same_rounding(odd):
    rng = np.random.default_rng(1)
    values = rng.uniform(0.0, 50.0, size=(5, 4, 3)).astype(np.float32)
    values[2, 1, 2] = odd
    texts = values_json(values)
    _assert_published_as_rounded(values, texts)
    # Its neighbours come from the table as before.
    again = values_json(np.delete(values, 2, axis=0))
    assert texts[:2] + texts[3:] == again


def test_a_large_batch_is_laid_out_in_blocks_with_the_same_text():
    rng = np.random.default_rng(2)
    values = rng.gamma(0.7, 20.0, size=(2500, 4, 3)).astype(np.float32)
    texts = values_json(values)
    assert texts == [values_json(values[i : i + 1])[0] for i in range(len(values))]
    assert values_json(values[:0]) == []


def test_a_forecast_message_holds_the_contract_fields():
    values = np.array([[[1.25, 2.5, 3.75]] * 4, [[0.0, 0.5, 1125.5]] * 4], dtype=np.float32)
    messages = encode_forecasts(FMT, ["sku-1", 'sku "2"'], 20_000, values, 1_800_000_000_000)
    first, second = (orjson.loads(m) for m in messages)
    assert first["item_id"] == "sku-1" and second["item_id"] == 'sku "2"'
    for msg in (first, second):
        assert msg["schema"] == 1 and msg["bucket"] == "D" and msg["model_version"] == "m-1"
        assert msg["quantiles"] == [0.1, 0.5, 0.9] and msg["horizons"] == [1, 2, 3, 4]
        assert msg["origin"] == "2024-10-04T00:00:00.000Z" and msg["origin_ms"] == 1_728_000_000_000
        assert msg["produced_at"] == "2027-01-15T08:00:00.000Z"
    assert first["values"] == [[1.25, 2.5, 3.75]] * 4
    assert second["values"] == [[0.0, 0.5, 1125.5]] * 4


def test_items_and_values_must_pair_up():
    with pytest.raises(ValueError, match="2 items but 1 rows"):
        encode_forecasts(FMT, ["a", "b"], 0, np.zeros((1, 4, 3), np.float32), 0)


native = pytest.mark.skipif(not NATIVE_MESSAGES, reason="stream._messages was not built (no C compiler)")

ODD_IDS = ["sku-1", 'sku "2"', "back\\slash", "tab\there", "new\nline", "ünïcödé-€", "del\x7f", "", "x" * 600]
ODD_VALUES = [0.0, -0.0, 0.0004, 0.0005, 0.0015, 7.0, 999.9994, 999.9996, 1000.0, 25_431.77, 1e11, 1e12,
              1e13, -0.25, float("nan"), float("inf"), float("-inf")]  # fmt: skip


def _in_python(monkeypatch: pytest.MonkeyPatch, *args: object) -> list[bytes]:
    """``encode_forecasts(*args)`` through the Python path, as where the extension was not built."""
    with monkeypatch.context() as m:
        m.setattr(stream.publish, "_native", None)
        return encode_forecasts(*args)


@native
def test_the_c_messages_are_byte_for_byte_the_python_ones(monkeypatch):
    rng = np.random.default_rng(3)
    values = rng.gamma(0.5, 30.0, size=(400, 4, 3)).astype(np.float32)
    ids = [f"item-{i}" for i in range(len(values))]
    for i, (item, odd) in enumerate(zip(ODD_IDS * 2, ODD_VALUES + ODD_VALUES[:1], strict=True)):
        ids[10 * i] = item  # odd ids with ordinary values
        values[10 * i + 5, i % 4, i % 3] = odd  # odd values with ordinary ids
    for dtype in (np.float32, np.float64):
        v = values.astype(dtype)
        for items in (ids, np.array(ids, dtype=object)):
            fast = encode_forecasts(FMT, items, 20_000, v, 1_800_000_000_000)
            assert fast == _in_python(monkeypatch, FMT, items, 20_000, v, 1_800_000_000_000)
    assert [orjson.loads(m)["item_id"] for m in fast] == ids


@native
def test_the_c_messages_write_every_thousandth_as_orjson_does():
    k = np.concatenate([np.arange(0, 2_000_000, 7), np.random.default_rng(4).integers(0, 10**15, 20_000)])
    values = (k / 1000).reshape(-1, 1, 1)
    messages = encode_forecasts(ForecastFormat("D", "m", (0.5,), 1), ["i"] * len(values), 0, values, 0)
    texts = [m[m.index(b'"values":') + 9 : -1] for m in messages]
    assert texts == [b"[[" + orjson.dumps(float(v)) + b"]]" for v in values.ravel()]


def test_a_batch_of_no_items_has_no_messages(monkeypatch):
    assert encode_forecasts(FMT, [], 0, np.zeros((0, 4, 3), np.float32), 0) == []
    assert _in_python(monkeypatch, FMT, [], 0, np.zeros((0, 4, 3), np.float32), 0) == []


def test_the_published_decimals_are_the_same_where_forecasts_are_written_and_scored():
    from model.metrics import PUBLISHED_DECIMALS as scored_in_backtests
    from state.ledger import PUBLISHED_DECIMALS as scored_in_service

    assert DECIMALS == scored_in_backtests == scored_in_service == 3
