"""The price covariate (log1p of the carried-forward price) and the history file's price column."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from model.features import carry_forward, log_price
from model.history import HistoryFormatError, read_history


def _direct(price: np.ndarray, carried: bool) -> np.ndarray:
    """The covariate's definition, value by value: log1p(max(price, 0)), 0 where unknown."""
    filled = price if carried else carry_forward(price)
    with np.errstate(invalid="ignore"):
        out = np.log1p(np.maximum(filled, 0.0))
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(56,), (300, 56), (7, 5, 40), (0, 56), (3, 0)])
@pytest.mark.parametrize("change", [0.02, 0.9], ids=["prices-hold", "prices-move"])
@pytest.mark.parametrize("carried", [True, False])
def test_log_price_equals_the_definition_bit_for_bit(dtype, shape, change, carried):
    rng = np.random.default_rng(int(change * 100) + len(shape))
    n = int(np.prod(shape))
    moves = rng.choice([1.25, 2.5, 0.0, np.nan, 3.7, 1e6], size=n)
    price = np.where(rng.random(n) < change, moves, 2.5).reshape(shape).astype(dtype)
    got = log_price(price, carried=carried)
    assert got.dtype == np.float32 and got.shape == price.shape
    np.testing.assert_array_equal(got, _direct(price, carried))


def test_log_price_is_zero_before_the_first_price_and_holds_it_after():
    price = np.array([[np.nan, np.nan, 3.0, np.nan, 3.0, 5.0], [np.nan] * 6], dtype=np.float32)
    got = log_price(price)
    np.testing.assert_array_equal(got[1], 0.0)
    np.testing.assert_array_equal(got[0, :2], 0.0)
    np.testing.assert_allclose(got[0, 2:5], np.log1p(3.0), rtol=1e-6)
    np.testing.assert_allclose(got[0, 5], np.log1p(5.0), rtol=1e-6)


def _history_file(tmp_path, price: str):
    path = tmp_path / "h.csv.gz"
    rows = ["item_id,date,qty,price", "a,2024-01-01,1,2.5", f"a,2024-01-02,3,{price}", "a,2024-01-03,0,"]
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    return path


@pytest.mark.parametrize("price", ["-1", "inf", "-inf"])
def test_history_file_with_a_negative_or_infinite_price_is_refused_naming_the_line(tmp_path, price):
    with pytest.raises(HistoryFormatError, match=r"h\.csv\.gz:3: price must be a finite number >= 0"):
        read_history(_history_file(tmp_path, price))


def test_history_file_price_that_is_not_a_number_is_refused_naming_the_line(tmp_path):
    with pytest.raises(HistoryFormatError, match=r"h\.csv\.gz:3: price 'cheap' is not a number"):
        read_history(_history_file(tmp_path, "cheap"))


def test_history_file_with_an_empty_price_cell_reads_it_as_unknown(tmp_path):
    history = read_history(_history_file(tmp_path, "4"))
    np.testing.assert_array_equal(history.price[0, :2], [2.5, 4.0])
    assert np.isnan(history.price[0, 2])
