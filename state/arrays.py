"""Row arrays that grow as items arrive."""

from __future__ import annotations

import numpy as np


def grown(arr: np.ndarray, capacity: int, fill: object) -> np.ndarray:
    """``arr`` with room for ``capacity`` rows, the new rows set to ``fill``.

    Every byte is written once (not filled and then overwritten): growing the state, the ledger
    most of all, is the largest cost a new item brings.
    """
    out = np.empty((capacity, *arr.shape[1:]), dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    out[arr.shape[0] :] = fill
    return out
