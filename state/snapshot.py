"""Serialise a partition's state to bytes and back, exactly.

A snapshot records the input offset it includes: restoring it and replaying the input from that
offset gives the same state as a run that never stopped. The format is a numpy ``.npz`` archive
(no pickling) with a JSON header; item ids travel as one UTF-8 blob with end offsets.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict

import numpy as np

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
    starts = np.concatenate([[0], ends[:-1]]).tolist()
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


def restore(data: bytes, cfg: StateConfig) -> tuple[PartitionState, int]:
    """Rebuild a partition's state from :func:`snapshot` bytes; returns it and its input offset."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays["header"].tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SnapshotError(f"unreadable state snapshot: {exc}") from exc
    if header.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"snapshot format {header.get('format')} is not {SNAPSHOT_FORMAT}")
    if header["config"] != _fingerprint(cfg):
        raise SnapshotError(
            f"snapshot was taken with {header['config']}, the service now runs {_fingerprint(cfg)}; "
            "state cannot be carried across a change of bucket, context, horizons or quantiles"
        )
    n = int(header["n_items"])
    state = PartitionState(cfg, int(header["partition"]))
    ids = decode_ids(arrays["ids_blob"], arrays["ids_ends"])
    state.reserve(n)
    state.ids[:n] = ids
    state.index = {item: row for row, item in enumerate(ids)}
    state.qty[:n] = arrays["qty"]
    state.price[:n] = arrays["price"]
    state.first_bucket[:n] = arrays["first_bucket"]
    state.last_sale[:n] = arrays["last_sale"]
    state.last_price[:n] = arrays["last_price"]
    state.ledger.forecasts[:n] = arrays["ledger_forecasts"]
    state.ledger.origin[:n] = arrays["ledger_origin"]
    # A model with a longer or shorter feedback window may follow the one the snapshot was taken
    # under: the averages and the newest scored buckets carry over, the rest starts empty.
    fb = arrays["ledger_feedback"]
    width = min(fb.shape[1], state.ledger.n_errors)
    state.ledger.feedback[:n, :width] = fb[:, :width]
    for k, b in enumerate(header["open_buckets"]):
        acc = OpenBucket.empty(state.capacity)
        acc.qty[:n] = arrays["open_qty"][k]
        acc.amount[:n] = arrays["open_amount"][k]
        acc.priced_qty[:n] = arrays["open_priced"][k]
        state.open[int(b)] = acc
    state.next_close = header["next_close"]
    if state.next_close is not None:
        state.ledger.refresh_previous(int(state.next_close) - 1, n)
    state.max_event_ms = int(header["max_event_ms"])
    return state, int(header["input_offset"])
