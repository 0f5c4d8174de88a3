"""Item attributes: decoding the items topic's records and the table of static ids they fill."""

from __future__ import annotations

import numpy as np
import pytest

from model.features import static_ids
from stream.inputs import StaticTable
from stream.items import AttributeFormatError, decode_attributes


def test_an_items_record_is_an_item_id_and_an_object_of_attributes():
    assert decode_attributes(b"sku-1", b'{"store": "3", "dept": 7}') == ("sku-1", {"store": "3", "dept": 7})
    assert decode_attributes("é-1".encode(), None) == ("é-1", None)  # a tombstone: forget the item


@pytest.mark.parametrize(
    "key,value,reason",
    [
        (None, b"{}", "no key"),
        (b"\xff", b"{}", "UTF-8"),
        (b"sku", b"{not json", "not JSON"),
        (b"sku", b'["store", 3]', "JSON list, not an object"),
    ],
)
def test_a_bad_items_record_is_refused_with_its_reason(key, value, reason):
    with pytest.raises(AttributeFormatError, match=reason):
        decode_attributes(key, value)


def test_static_ids_are_the_trainers_hashes_and_unknown_items_are_zero():
    table = StaticTable(("store", "dept"), 64)
    assert table.ids_for(np.array(["a"], dtype=object)).tolist() == [[0, 0]]  # nothing known yet
    items = [f"sku-{i}" for i in range(3000)]  # more than the table's first allocation
    for i, item in enumerate(items):
        table.update(item, {"store": i % 45, "dept": f"d{i % 7}", "ignored": 1})
    table.update("sku-5", {"store": 44})  # changed: a missing column is 'unknown'
    asked = np.array(["sku-2999", "new", "sku-5", "sku-0"], dtype=object)
    expected = np.stack(
        [
            static_ids(np.array(["29", "d3"]), 64),
            [0, 0],
            static_ids(np.array(["44", ""]), 64),
            static_ids(np.array(["0", "d0"]), 64),
        ]
    )
    np.testing.assert_array_equal(table.ids_for(asked), expected)
    assert len(table) == 3000
    table.forget("sku-0")
    table.update("sku-new", {"store": 1, "dept": "d1"})  # a new row, not sku-0's old one
    got = table.ids_for(np.array(["sku-0", "sku-new", "sku-1"], dtype=object))
    np.testing.assert_array_equal(got[0], [0, 0])
    np.testing.assert_array_equal(got[1], got[2])
    assert len(table) == 3000


def test_a_model_without_static_columns_gets_empty_ids():
    table = StaticTable((), 1024)
    table.update("sku", {"store": 1})
    assert table.ids_for(np.array(["sku", "x"], dtype=object)).shape == (2, 0)
