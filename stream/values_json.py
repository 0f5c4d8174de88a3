"""The JSON text of forecast values, a whole batch at once, rounded to thousandths of a unit.

Formatting the numbers is most of a forecast message's cost: orjson needs about 25 ns per float,
a thousand items' 42 numbers about 1.4 ms, holding the GIL. Demand values below 1,000 units
(almost all of them) are instead looked up: every multiple of 0.001 in [0, 1000) has its text
precomputed in an 8-byte cell (``,`` then at most 7 characters, NUL-padded). A batch's cells,
with the brackets between rows and messages, are laid out in one array whose bytes, NULs deleted
and cut at a marker byte, are the messages' value arrays (`python -m bench inference` times it).
A message with any value outside the table (1,000 units or more, negative, NaN) is formatted by
orjson from the same rounded values instead.

Where the C extension was built (``stream/_messages.c``), :func:`stream.publish.encode_forecasts`
writes whole messages in C with the same text; this module then writes only the values of the
rows C leaves (NaN, negative values, ids that need escaping), and all of them on installs
without a C compiler.
"""

from __future__ import annotations

import functools

import numpy as np
import orjson

from model.metrics import PUBLISHED_DECIMALS, as_published

#: Values are published rounded to this many decimals (0.001 units).
DECIMALS = PUBLISHED_DECIMALS
_SCALE = 10**DECIMALS
#: Values ``[0, _LIMIT / _SCALE)`` are formatted from the table.
_LIMIT = 1000 * _SCALE

_OPEN_ROW = np.uint64(ord("["))
_LOW_BYTE = np.uint64(0xFF)
# Cell bytes are little-endian: the first character is the lowest byte.
_END_ROW = np.uint64(ord("]") | ord(",") << 8)
_END_MESSAGE = np.uint64(ord("]") | ord("]") << 8 | 1 << 16 | ord("[") << 24)  # ]] \x01 [


@functools.cache
def _cells() -> np.ndarray:
    """uint64 [_LIMIT]: cell ``k`` holds the text ``,<k / 1000>`` (``,12.5``, ``,0.001``, ``,7.0``);
    NULs may sit anywhere in a cell, since they are deleted once the batch is laid out."""
    k = np.arange(_LIMIT, dtype=np.int64)
    whole, frac = np.divmod(k, _SCALE)
    c = np.zeros((_LIMIT, 8), dtype=np.uint8)
    c[:, 0] = ord(",")
    c[:, 1] = np.where(whole >= 100, 48 + whole // 100, 0)
    c[:, 2] = np.where(whole >= 10, 48 + whole // 10 % 10, 0)
    c[:, 3] = 48 + whole % 10
    c[:, 4] = ord(".")
    c[:, 5] = 48 + frac // 100  # a whole number keeps its ".0", as floats are written elsewhere
    c[:, 6] = np.where(frac % 100 > 0, 48 + frac // 10 % 10, 0)
    c[:, 7] = np.where(frac % 10 > 0, 48 + frac % 10, 0)
    return c.view("<u8").reshape(-1)


def prepare_values_json() -> None:
    """Build the number table now (about 0.1 s), so that the first batch does not wait for it."""
    _cells()


def scaled_values(values: np.ndarray) -> np.ndarray:
    """``values`` in thousandths of a unit, rounded to whole numbers (half to even), as float64 in a
    new C-contiguous array: the published numbers are these divided by 1000."""
    scaled = np.multiply(values, float(_SCALE), dtype=np.float64)
    return np.rint(scaled, out=scaled)


#: Items laid out at a time: a block's cells stay in the CPU's cache while they are cut up.
_BLOCK = 1024


def values_json(values: np.ndarray) -> list[bytes]:
    """The JSON array text ``[[v, ...], ...]`` of each item's ``values[i]`` ([N, H, Q]), every number
    rounded to :data:`DECIMALS` decimals (half to even on the value in float64)."""
    if len(values) <= _BLOCK:
        return _block_json(values)
    return [text for lo in range(0, len(values), _BLOCK) for text in _block_json(values[lo : lo + _BLOCK])]


def _block_json(values: np.ndarray) -> list[bytes]:
    n, h, q = values.shape
    if n == 0:
        return []
    scaled = scaled_values(values)
    inside = (scaled >= 0) & (scaled < _LIMIT)  # False for NaN
    fits = inside.reshape(n, -1).all(axis=1)
    scaled[~inside] = 0
    laid = np.empty((n, h, q + 1), dtype=np.uint64)
    laid[:, :, :q] = _cells()[scaled.astype(np.intp)]
    laid[:, :, 0] = (laid[:, :, 0] & ~_LOW_BYTE) | _OPEN_ROW
    laid[:, :, q] = _END_ROW
    laid[:, -1, q] = _END_MESSAGE
    # Each message's text ends with its marker and the next one's opening bracket: the first
    # message gets its bracket here, the last one's spare bracket is dropped.
    texts = (b"[" + laid.tobytes().translate(None, b"\0")).split(b"\x01")
    texts.pop()
    if not fits.all():
        option = orjson.OPT_SERIALIZE_NUMPY
        for i in np.flatnonzero(~fits).tolist():
            texts[i] = orjson.dumps(as_published(values[i]), option=option)
    return texts
