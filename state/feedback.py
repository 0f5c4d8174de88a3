"""Realised errors of past forecasts, turned into feedback features for the next forecast.

When a target bucket closes, every forecast that targeted it (made ``h`` buckets earlier, for
``h = 1..H``) is scored against the actual. The scores are scaled by the item's demand level and
folded into exponentially weighted averages, which the network receives as inputs with its next
forecast. With a ``window`` of ``K``, the feature vector also holds the item's last ``K`` scored
buckets one by one (newest first), which the network attends over (``model.network``). The trainer
replays the same two functions over the training history, so the model is trained on exactly the
features it is served.

Layout of one item's vector, ``E = 3 + Q`` columns per block: the averages (weight, bias, coverage,
pinball per quantile), then ``K`` blocks of one scored bucket each (seen flag, bias, coverage,
pinball per quantile), all zero until that many buckets were scored.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: Smoothing of the exponentially weighted error averages (weight of the newest realisation).
DEFAULT_ALPHA = 0.3
#: Scaled errors are clipped to this magnitude so one freak sale cannot dominate the averages.
ERROR_CLIP = 10.0


def feedback_feature_names(
    quantiles: tuple[float, ...], window: int = 0, previous: int = 0
) -> tuple[str, ...]:
    """Names of the feedback feature columns for a set of quantile levels, a window of scored
    buckets (0: the averages only) and ``previous`` horizons of previous forecasts (0: none)."""
    pinball = tuple(f"pinball_q{q:g}" for q in quantiles)
    names = ("fb_weight", "fb_bias", "fb_coverage", *(f"fb_{p}" for p in pinball))
    for k in range(1, window + 1):
        names += tuple(f"fb_recent{k}_{c}" for c in ("seen", "bias", "coverage", *pinball))
    for h in range(1, previous + 1):
        names += (f"fb_prev_h{h}_seen", *(f"fb_prev_h{h}_q{q:g}" for q in quantiles))
    return names


def n_error_features(n_quantiles: int, window: int = 0) -> int:
    """Width of the realised-error part of the feedback vector (the averages and the window)."""
    return (3 + n_quantiles) * (1 + window)


def n_feedback_features(n_quantiles: int, window: int = 0, previous: int = 0) -> int:
    """Width of the feedback feature vector."""
    return n_error_features(n_quantiles, window) + previous * (1 + n_quantiles)


def previous_forecasts(last: np.ndarray) -> np.ndarray:
    """The previous-forecast block of the feedback vector from the forecasts ``last`` [N, H, Q] that
    the previous origin made (NaN rows: none), float32 [N, H * (1 + Q)].

    The coming forecast's horizon ``h`` targets the bucket the previous one reached at ``h + 1``,
    so horizon ``h`` gets ``last[:, h]`` (0-based) and the last horizon nothing.
    """
    n, h_len, q = last.shape
    out = np.zeros((n, h_len, 1 + q), dtype=np.float32)
    ahead = last[:, 1:]
    seen = np.isfinite(ahead[:, :, 0])
    out[:, : h_len - 1, 0] = seen
    out[:, : h_len - 1, 1:] = np.where(seen[:, :, None], ahead, 0.0)
    return out.reshape(n, h_len * (1 + q))


def item_scale(qty_window: np.ndarray, observed_window: np.ndarray) -> np.ndarray:
    """Demand level of each item: 1 + mean observed demand over the context window, float32 [N].

    The network normalises with the same definition (``model.network``), so errors scaled here are
    on the network's own scale.
    """
    obs = observed_window.astype(np.float32)
    total = (qty_window * obs).sum(axis=-1)
    count = obs.sum(axis=-1)
    return (1.0 + total / np.maximum(count, 1.0)).astype(np.float32)


def realised_errors(
    realised: np.ndarray, actual: np.ndarray, scale: np.ndarray, quantiles: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Score the forecasts that targeted one bucket.

    ``realised`` is float32 [N, H, Q]: for each item, the forecast made ``h+1`` buckets before the
    target, NaN where none was made. Returns ``(errors [N, 2 + Q], has [N])``: the signed scaled
    error of the median, the outer-interval hit rate and the scaled pinball loss per quantile, each
    averaged over the horizons that had a forecast; ``has`` is False for items with none.
    """
    q = np.asarray(quantiles, dtype=np.float32)
    valid = np.isfinite(realised[:, :, 0])  # [N, H]
    n_valid = valid.sum(axis=1)
    has = n_valid > 0
    denom = np.maximum(n_valid, 1).astype(np.float32)
    y = actual.astype(np.float32)[:, None]
    s = scale.astype(np.float32)[:, None]
    pred = np.where(valid[:, :, None], realised, 0.0)
    mid = int(np.argmin(np.abs(q - 0.5)))

    bias = np.clip((y - pred[:, :, mid]) / s, -ERROR_CLIP, ERROR_CLIP)
    bias = np.where(valid, bias, 0.0).sum(axis=1) / denom

    hit = (y >= pred[:, :, 0]) & (y <= pred[:, :, -1]) & valid
    coverage = hit.sum(axis=1) / denom

    diff = y[:, :, None] - pred  # [N, H, Q]
    pinball = np.maximum(q * diff, (q - 1.0) * diff) / s[:, :, None]
    pinball = np.clip(pinball, 0.0, ERROR_CLIP)
    pinball = np.where(valid[:, :, None], pinball, 0.0).sum(axis=1) / denom[:, None]

    errors = np.concatenate([bias[:, None], coverage[:, None], pinball], axis=1).astype(np.float32)
    return errors, has


def update_feedback(
    features: np.ndarray, errors: np.ndarray, has: np.ndarray, alpha: float = DEFAULT_ALPHA
) -> np.ndarray:
    """Fold one bucket's realised errors into the feedback features (returns a new array).

    Column 0 is the weight, ``1 - (1 - alpha)^n`` after ``n`` realisations, which tells the network
    how much history stands behind the averages in the other columns (all zero for a new item).
    Items with a realisation also push it, with its seen flag, to the front of their window (the
    width of ``features``, the error part of the vector only, says how long the window is); the
    oldest falls off.
    """
    out = features.copy()
    e = errors.shape[1] + 1
    a = np.float32(alpha)
    upd = has[:, None]
    out[:, 0] = np.where(has, (1 - a) * features[:, 0] + a, features[:, 0])
    out[:, 1:e] = np.where(upd, (1 - a) * features[:, 1:e] + a * errors, features[:, 1:e])
    if features.shape[1] > e:
        rows = np.flatnonzero(has)
        out[rows, 2 * e :] = features[rows, e:-e]
        out[rows, e] = 1.0
        out[rows, e + 1 : 2 * e] = errors[rows]
    return out


def feedback_steps(
    forecasts: np.ndarray,
    qty: np.ndarray,
    observed: np.ndarray,
    context_length: int,
    quantiles: tuple[float, ...],
    window: int = 0,
    alpha: float = DEFAULT_ALPHA,
    previous: bool = False,
) -> Iterator[np.ndarray]:
    """The serving ledger's recurrence over a history, one origin at a time: yields the feedback
    features float32 [N, F] that the forecast at origin ``t = 0, 1, ...`` receives.

    Arguments as :func:`replay_feedback`. ``forecasts`` is read lazily: the features of origin
    ``t`` read only the forecasts of origins before ``t``, and only when they are asked for, so a
    caller may write the forecast of origin ``t`` into ``forecasts`` after receiving its features
    (which is how a model's forecasts on its own feedback are made, ``model.train``).
    """
    n, t_len, h_len, _ = forecasts.shape
    q = np.asarray(quantiles, dtype=np.float32)
    feats = np.zeros((n, n_error_features(len(quantiles), window)), dtype=np.float32)
    width = n_feedback_features(len(quantiles), window, h_len if previous else 0)
    obs_f = observed.astype(np.float32)
    qty_obs = np.where(observed, qty, 0.0).astype(np.float32)
    # Rolling window sums give the same scale the ledger computes from its ring buffer.
    csum_q = np.concatenate([np.zeros((n, 1), np.float32), np.cumsum(qty_obs, axis=1)], axis=1)
    csum_o = np.concatenate([np.zeros((n, 1), np.float32), np.cumsum(obs_f, axis=1)], axis=1)
    realised = np.full((n, h_len, forecasts.shape[3]), np.nan, dtype=np.float32)
    for t in range(t_len):
        lo = max(0, t + 1 - context_length)
        count = csum_o[:, t + 1] - csum_o[:, lo]
        scale = 1.0 + (csum_q[:, t + 1] - csum_q[:, lo]) / np.maximum(count, 1.0)
        realised.fill(np.nan)
        for h in range(1, min(h_len, t) + 1):
            realised[:, h - 1, :] = forecasts[:, t - h, h - 1, :]
        # A bucket without a row in the file is unknown, not a zero: nothing is scored against it.
        realised[~observed[:, t]] = np.nan
        errors, has = realised_errors(realised, qty[:, t], scale, q)
        feats = update_feedback(feats, errors, has, alpha)
        out = np.zeros((n, width), dtype=np.float32)
        out[:, : feats.shape[1]] = feats
        if previous and t > 0:
            out[:, feats.shape[1] :] = previous_forecasts(forecasts[:, t - 1])
        yield out


def replay_feedback(
    forecasts: np.ndarray,
    qty: np.ndarray,
    observed: np.ndarray,
    context_length: int,
    quantiles: tuple[float, ...],
    window: int = 0,
    alpha: float = DEFAULT_ALPHA,
    previous: bool = False,
) -> np.ndarray:
    """Feedback features at every origin of a history, as the serving ledger would have built them.

    ``forecasts`` is float32 [N, T, H, Q]: the forecast made at origin ``t`` (after bucket ``t``
    closed) for buckets ``t+1..t+H``; NaN where the item was not yet tracked. ``window`` is the
    number of scored buckets kept one by one and ``previous`` adds each horizon's previous forecast
    (see the module docstring). Returns float32 [N, T, F]: the features the forecast at origin
    ``t`` receives, i.e. after the errors realised at bucket ``t`` were folded in. This is the
    serving recurrence run over the whole history (:func:`feedback_steps`), so the trainer feeds
    the network exactly what the service will.
    """
    n, t_len, h_len, _ = forecasts.shape
    width = n_feedback_features(len(quantiles), window, h_len if previous else 0)
    out = np.zeros((n, t_len, width), dtype=np.float32)
    steps = feedback_steps(forecasts, qty, observed, context_length, quantiles, window, alpha, previous)
    for t, feats in enumerate(steps):
        out[:, t] = feats
    return out
