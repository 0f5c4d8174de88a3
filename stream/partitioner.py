"""Kafka's default key partitioning (murmur2), for a whole batch of keys at once.

The producer's own partitioner hashes each key in pure Python, which costs about as much as the
rest of a send together. Hashing a batch at once (in C, or over numpy columns) and passing the
partition explicitly puts every forecast exactly where the default partitioner (and the Java
client) would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

try:
    from stream import _records as _native
except ImportError:  # built without a C compiler (setup.py): the same hashes over numpy columns
    _native = None

_SEED = np.uint32(0x9747B28C)
_M = np.uint32(0x5BD1E995)


def murmur2(keys: Sequence[bytes | str]) -> np.ndarray:
    """Kafka's murmur2 hash (``Utils.murmur2``) of each key (a str: of its UTF-8), as uint32.

    In C where the extension was built (``stream/_records.c``), else over numpy columns."""
    if _native is not None:
        return np.frombuffer(_native.murmur2(keys), dtype=np.uint32)
    return _murmur2_columns([k.encode("utf-8") if isinstance(k, str) else k for k in keys])


def _murmur2_columns(keys: list[bytes]) -> np.ndarray:
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=n)
    width = max(4, int(-(-lengths.max() // 4) * 4))
    # Fixed-width bytes pad with NULs on the right; the lengths say where each key really ends.
    raw = np.array(keys, dtype=f"S{width}").view(np.uint8).reshape(n, width)
    words = raw.view("<u4").astype(np.uint32)
    h = _SEED ^ lengths.astype(np.uint32)
    blocks = lengths // 4
    for j in range(int(blocks.max())):
        live = blocks > j
        k = words[:, j] * _M
        k ^= k >> np.uint32(24)
        k *= _M
        h = np.where(live, (h * _M) ^ k, h)
    tail = lengths % 4
    base = blocks * 4
    rows = np.arange(n)
    for i in (2, 1, 0):
        has = tail > i
        byte = raw[rows, np.minimum(base + i, width - 1)].astype(np.uint32)
        h = np.where(has, h ^ (byte << np.uint32(8 * i)), h)
    h = np.where(tail > 0, h * _M, h)
    h ^= h >> np.uint32(13)
    h *= _M
    h ^= h >> np.uint32(15)
    return h


def key_partitions(keys: Sequence[bytes | str], partitions: Sequence[int]) -> np.ndarray:
    """The partition the default partitioner gives each key, among the topic's ``partitions``."""
    ordered = np.array(sorted(partitions), dtype=np.int64)
    if ordered.size == 0:
        raise ValueError("the topic has no partitions")
    idx = (murmur2(keys) & np.uint32(0x7FFFFFFF)).astype(np.int64) % ordered.size
    return ordered[idx]
