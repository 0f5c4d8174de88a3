"""Training tensors of a history: every item's whole series, ready for forking-sequence training.

The features come from the same functions the serving path uses (``model.features``), so a column
means the same thing in training and in production.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.features import calendar_features, log_price, static_ids
from model.history import History, bucket_start_ms
from model.network import ModelArgs


@dataclass
class TrainingTensors:
    """Inputs and targets at every origin of every item."""

    target: np.ndarray  # float32 [N, T]: demand, 0 where unobserved
    observed: np.ndarray  # float32 [N, T]
    past_cov: np.ndarray  # float32 [N, T, Cp]
    future_cov: np.ndarray  # float32 [N, T, H, Cf]: calendar of t+1..t+H (a read-only broadcast view)
    static: np.ndarray  # int64 [N, S]
    ahead: np.ndarray  # float32 [N, T, H]: demand at t+h+1 (0 past the end)
    mask: np.ndarray  # float32 [N, T, H]: 1 where that demand is known and the item is tracked at t
    first: np.ndarray  # int64 [N]: first observed column of each item

    @property
    def n_items(self) -> int:
        return int(self.target.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.target.shape[1])


def build_tensors(history: History, args: ModelArgs) -> TrainingTensors:
    """Build :class:`TrainingTensors` for ``history`` at ``args``' horizons and static columns.

    The loss mask is 1 where the target bucket was observed and the origin is at or after the
    item's first observed bucket (the service tracks an item from its first sale on).
    """
    n, t = history.qty.shape
    h = args.horizons
    observed = history.observed
    target = np.where(observed, history.qty, 0.0).astype(np.float32)
    starts = history.bucket_start_ms()
    cal = calendar_features(starts)  # [T, C]
    past_cov = np.empty((n, t, cal.shape[1] + 1), dtype=np.float32)
    past_cov[:, :, :-1] = cal
    past_cov[:, :, -1] = log_price(history.price)
    future_buckets = history.first_bucket + np.arange(t)[:, None] + 1 + np.arange(h)[None, :]
    # Items share the bucket axis, hence the calendar: one [T, H, C] array viewed as [N, T, H, C].
    # bucket_start_ms extends the calendar past the last bucket of the data.
    calendar_ahead = calendar_features(bucket_start_ms(future_buckets, history.freq))
    future_cov = np.broadcast_to(calendar_ahead, (n, *calendar_ahead.shape))

    if args.n_static > len(history.static):
        raise ValueError(
            f"the network takes {args.n_static} static columns, the history has {list(history.static)}"
        )
    # The first n_static columns, in file order: the artefact names them for the service.
    cols = list(history.static)[: args.n_static]
    static = np.zeros((n, len(cols)), dtype=np.int64)
    for j, c in enumerate(cols):
        static[:, j] = static_ids(history.static[c], args.static_vocab)

    idx = np.arange(t)[:, None] + 1 + np.arange(h)[None, :]  # [T, H] target column
    inside = idx < t
    idx_c = np.minimum(idx, t - 1)
    ahead = np.where(inside[None], target[:, idx_c], 0.0).astype(np.float32)
    known = observed[:, idx_c] & inside[None]
    first = np.where(observed.any(axis=1), observed.argmax(axis=1), t).astype(np.int64)
    tracked = np.arange(t)[None, :] >= first[:, None]  # [N, T]
    mask = (known & tracked[:, :, None]).astype(np.float32)
    return TrainingTensors(
        target, observed.astype(np.float32), past_cov, future_cov, static, ahead, mask, first
    )
