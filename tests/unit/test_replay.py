"""Reading files to replay: every understood format, in time order, with clear errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from stream.replay import ReplayFormatError, encode_event, load_events


def test_events_file_with_epoch_milliseconds(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("item_id,ts,qty,price\nb,1600000000500,2,1.5\na,1600000000000,1,\n")
    ev = load_events(f)
    assert ev.event_ms.tolist() == [1_600_000_000_000, 1_600_000_000_500]
    assert list(ev.item_ids) == ["a", "b"] and np.isnan(ev.price[0])


def test_events_file_with_rfc3339_times(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("item_id,ts,qty\na,2011-01-02T03:04:05Z,1\n")
    assert load_events(f).event_ms.tolist() == [1_293_937_445_000]


def test_online_retail_lines_upper_case_the_stock_code(tmp_path):
    f = tmp_path / "r.csv.gz"
    with gzip.open(f, "wt") as fh:
        fh.write("InvoiceNo,StockCode,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n")
        fh.write("536365,85123a,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n")
        fh.write("C536379,D,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom\n")
    ev = load_events(f)
    assert list(ev.item_ids) == ["85123A", "D"] and ev.qty.tolist() == [6.0, -1.0]
    assert list(ev.event_ids) == ["536365:0", "C536379:1"]


def test_history_file_becomes_one_event_per_sale(tmp_path):
    f = tmp_path / "h.csv"
    f.write_text("item_id,date,qty,price\na,2020-01-01,3,2\na,2020-01-02,0,\nb,2020-01-02,1,5\n")
    ev = load_events(f)
    assert len(ev) == 2 and list(ev.item_ids) == ["a", "b"]


def test_bad_number_names_the_line(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("item_id,ts,qty\na,1600000000000,1\na,1600000000001,many\n")
    with pytest.raises(ReplayFormatError, match=r"e\.csv:3: qty 'many'"):
        load_events(f)


def test_unknown_header_is_refused(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(ReplayFormatError, match="neither"):
        load_events(f)


def test_encoded_event_follows_the_contract():
    assert encode_event("a", 5, 1.0, float("nan"), None) == b'{"item_id":"a","ts":5,"qty":1.0}'
    assert b'"price":2.0' in encode_event("a", 5, 1.0, 2.0, "e1")
