"""Serialise a partition's state to bytes and back, exactly.

A snapshot records the input offset it includes: restoring it and replaying the input from that
offset gives the same state as a run that never stopped. The format is a numpy ``.npz`` archive
(no pickling) with a JSON header; item ids travel as one UTF-8 blob with end offsets.

A restore reads the archive where its changelog chunks lie and each large array straight into the
state's own rows: a partition of 1M items is 3 GB, and every copy of it in between (the chunks
joined, the arrays loaded, then copied into the state) cost seconds of writing fresh memory.
"""

from __future__ import annotations

import bisect
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
from numpy.lib import format as npy

from state.config import StateConfig
from state.errors import SnapshotError
from state.partition import OpenBucket, PartitionState

SNAPSHOT_FORMAT = 1

# Settings a snapshot must agree with: the shapes and meaning of the arrays depend on them.
_FINGERPRINT = ("freq", "context_length", "horizons", "quantiles")


def _fingerprint(cfg: StateConfig) -> dict:
    d = asdict(cfg)
    return {k: list(d[k]) if isinstance(d[k], tuple) else d[k] for k in _FINGERPRINT}


def encode_ids(ids: list[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Item ids as (uint8 blob, int64 end offsets)."""
    encoded = [str(i).encode("utf-8") for i in ids]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), ends


def decode_ids(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    """Inverse of :func:`encode_ids`."""
    raw = blob.tobytes()
    starts = np.concatenate([[0], ends[:-1]]).tolist() if ends.size else []
    return [raw[a:b].decode("utf-8") for a, b in zip(starts, ends.tolist(), strict=True)]


def snapshot(state: PartitionState, input_offset: int) -> bytes:
    """Bytes of ``state`` as of ``input_offset`` (the next input offset it has not seen)."""
    n = state.n_items
    blob, ends = encode_ids(state.ids[:n])
    open_buckets = sorted(state.open)
    header = {
        "format": SNAPSHOT_FORMAT,
        "config": _fingerprint(state.cfg),
        "partition": state.partition,
        "input_offset": int(input_offset),
        "next_close": state.next_close,
        "max_event_ms": int(state.max_event_ms),
        "n_items": n,
        "open_buckets": open_buckets,
    }
    arrays = {
        "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        "ids_blob": blob,
        "ids_ends": ends,
        "qty": state.qty[:n],
        "price": state.price[:n],
        "first_bucket": state.first_bucket[:n],
        "last_sale": state.last_sale[:n],
        "last_price": state.last_price[:n],
        "ledger_forecasts": state.ledger.forecasts[:n],
        "ledger_origin": state.ledger.origin[:n],
        # The previous forecasts in the feedback are rebuilt from the ledger's forecasts on restore.
        "ledger_feedback": state.ledger.feedback[:n, : state.ledger.n_errors],
        "open_qty": np.stack([state.open[b].qty[:n] for b in open_buckets])
        if open_buckets
        else np.zeros((0, n)),
        "open_amount": np.stack([state.open[b].amount[:n] for b in open_buckets])
        if open_buckets
        else np.zeros((0, n)),
        "open_priced": np.stack([state.open[b].priced_qty[:n] for b in open_buckets])
        if open_buckets
        else np.zeros((0, n)),
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class _Chunks(io.RawIOBase):
    """A seekable, read-only file over a snapshot's chunks, read where they lie."""

    def __init__(self, parts: Sequence[bytes]) -> None:
        self._parts = [memoryview(p).cast("B") for p in parts]
        self._starts = [0]
        for p in self._parts:
            self._starts.append(self._starts[-1] + len(p))
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._pos < self._starts[-1]:
            k = bisect.bisect_right(self._starts, self._pos) - 1
            part = self._parts[k][self._pos - self._starts[k] :]
            n = min(len(part), len(out) - done)
            out[done : done + n] = part[:n]
            done += n
            self._pos += n
        return done


_READ_BYTES = 16 << 20  # a restore's reads from the archive, in pieces of this size


def _npy_header(f: zipfile.ZipExtFile) -> tuple[tuple[int, ...], np.dtype]:
    version = npy.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = npy.read_array_header_2_0(f)
    else:
        raise ValueError(f"npy format {version} is not one a snapshot is written in")
    if fortran or dtype.hasobject:
        raise ValueError("a snapshot array is Fortran-ordered or holds objects")
    return shape, dtype


def _read_into(f: zipfile.ZipExtFile, out: np.ndarray) -> None:
    if out.nbytes == 0:
        return
    view = memoryview(out.reshape(-1)).cast("B")
    done = 0
    while done < len(view):
        piece = f.read(min(_READ_BYTES, len(view) - done))
        if not piece:
            raise ValueError("a snapshot array ends early")
        view[done : done + len(piece)] = piece
        done += len(piece)


def _load(zf: zipfile.ZipFile, name: str, into: np.ndarray | None = None) -> np.ndarray:
    """Array ``name`` of the archive: read straight into ``into`` where it fits exactly (its shape,
    dtype and a contiguous layout), else into a new array (returned either way)."""
    with zf.open(f"{name}.npy") as f:
        shape, dtype = _npy_header(f)
        if into is not None and into.shape == shape and into.dtype == dtype and into.flags.c_contiguous:
            _read_into(f, into)
            return into
        arr = np.empty(shape, dtype=dtype)
        _read_into(f, arr)
        return arr


def restore(data: bytes | Sequence[bytes], cfg: StateConfig) -> tuple[PartitionState, int]:
    """Rebuild a partition's state from :func:`snapshot` bytes, whole or in the changelog's chunks;
    returns it and its input offset."""
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        with zipfile.ZipFile(_Chunks(parts)) as zf:
            return _restore(zf, cfg)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SnapshotError(f"unreadable state snapshot: {exc}") from exc


def _restore(zf: zipfile.ZipFile, cfg: StateConfig) -> tuple[PartitionState, int]:
    header = json.loads(_load(zf, "header").tobytes())
    if header.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"snapshot format {header.get('format')} is not {SNAPSHOT_FORMAT}")
    if header["config"] != _fingerprint(cfg):
        raise SnapshotError(
            f"snapshot was taken with {header['config']}, the service now runs {_fingerprint(cfg)}; "
            "state cannot be carried across a change of bucket, context, horizons or quantiles"
        )
    n = int(header["n_items"])
    state = PartitionState(cfg, int(header["partition"]))
    ids = decode_ids(_load(zf, "ids_blob"), _load(zf, "ids_ends"))
    state.reserve(n)
    state.ids[:n] = ids
    state.index = {item: row for row, item in enumerate(ids)}
    for name, target in (
        ("qty", state.qty),
        ("price", state.price),
        ("first_bucket", state.first_bucket),
        ("last_sale", state.last_sale),
        ("last_price", state.last_price),
        ("ledger_forecasts", state.ledger.forecasts),
        ("ledger_origin", state.ledger.origin),
    ):
        rows = target[:n]
        arr = _load(zf, name, rows)
        if arr is not rows:
            rows[...] = arr
    # A model with a longer or shorter feedback window may follow the one the snapshot was taken
    # under: the averages and the newest scored buckets carry over, the rest starts empty.
    fb = _load(zf, "ledger_feedback")
    width = min(fb.shape[1], state.ledger.n_errors)
    state.ledger.feedback[:n, :width] = fb[:, :width]
    open_qty, open_amount, open_priced = (_load(zf, k) for k in ("open_qty", "open_amount", "open_priced"))
    for k, b in enumerate(header["open_buckets"]):
        acc = OpenBucket.empty(state.capacity)
        acc.qty[:n] = open_qty[k]
        acc.amount[:n] = open_amount[k]
        acc.priced_qty[:n] = open_priced[k]
        state.open[int(b)] = acc
    state.next_close = header["next_close"]
    if state.next_close is not None:
        state.ledger.refresh_previous(int(state.next_close) - 1, n)
    state.max_event_ms = int(header["max_event_ms"])
    return state, int(header["input_offset"])
