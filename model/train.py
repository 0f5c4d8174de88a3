"""Training with forking sequences: a forecast at every step of every series, in one pass.

Each step takes a batch of items and runs the encoder once over their whole series; the decoder then
makes a forecast at every origin that has something to learn from, and the masked pinball loss is
summed over (origin, horizon, quantile).

Stage 0 trains with empty feedback. Each feedback stage then forecasts every origin with the model
so far, hands those forecasts to ``feedback_fn`` (the serving ledger's recurrence, injected by the
caller because ``model/`` does not know the state package) and goes on training with the features it
returns, so the network learns from the inputs the service will give it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from model.averaging import WeightAverage, averaged
from model.calibrate import interval_shifts
from model.dataset import TrainingTensors, build_tensors
from model.features import (
    DAY_OF_MONTH,
    DAY_OF_YEAR,
    EASTER,
    check_calendar_choice,
    reads_day_of_month,
    silent_calendar,
)
from model.history import History
from model.loss import pinball_loss
from model.metrics import coverage, pinball, volatility, weighted_quantile_loss
from model.network import (
    MQCNN,
    ModelArgs,
    MQCNNEnsemble,
    WindowMLP,
    member_networks,
    n_parameters,
    window_members,
)
from model.optim import adamw

#: ``(forecasts [N,T,H,Q] with NaN before each item's first observation, qty [N,T], observed [N,T])
#: -> feedback features float32 [N,T,F]``.
FeedbackFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: ``(forecasts [N,T,H,Q], qty [N,T], observed [N,T]) ->`` the feedback features [N, F] of each
#: origin in turn, reading ``forecasts`` lazily (``state.feedback.feedback_steps``).
FeedbackSteps = Callable[[np.ndarray, np.ndarray, np.ndarray], Iterator[np.ndarray]]
_Out = TypeVar("_Out")


def feedback_for(
    replay: Callable[..., _Out], args: ModelArgs
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], _Out]:
    """The serving ledger's recurrence ``replay`` (``state.feedback.replay_feedback``, or
    ``feedback_steps`` one origin at a time) bound to the feedback layout of ``args``:
    ``(forecasts, qty, observed) ->`` what ``replay`` returns (a :data:`FeedbackFn` or a
    :data:`FeedbackSteps`)."""

    def bound(forecasts: np.ndarray, qty: np.ndarray, observed: np.ndarray) -> _Out:
        return replay(
            forecasts,
            qty,
            observed,
            args.context_length,
            args.quantiles,
            args.feedback_window,
            previous=args.feedback_previous,
        )

    return bound


@dataclass(frozen=True)
class TrainConfig:
    """How to train; the defaults fit the bundled data sets on a 2-core CPU in a few minutes.

    ``max_minutes`` binds on the bundled data sets (an epoch of 3800 items x 262 days takes about
    6 s on one core with ``origin_sample=0.25``); ``epochs`` is a ceiling. Small batches: the budget
    buys about four times the optimiser steps of 64-item batches at the same cost per item, which
    matters more than the smoother gradient (validation wQL improved on both data sets).
    """

    epochs: int = 100
    batch_size: int = 16  # items per step; each step covers their whole series
    lr: float = 3e-3  # peak; a cosine schedule takes it down to lr / 20 by the end of the run
    weight_decay: float = 1e-5
    seed: int = 0
    max_minutes: float = 4.0  # for the whole run, all stages together
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    device: str = "cpu"
    feedback_stages: int = 1
    feedback_share: float = 0.35  # of the epochs and of the time budget, split across feedback stages
    validation_buckets: int | None = None  # default: the horizon; 0 trains on everything, keeps the last
    # "raw" sums pinball losses in demand units, which is exactly what wQL measures: an item weighs in
    # proportion to its volume. "scaled" divides each cell by the item's scale so every item counts
    # alike. On the bundled data sets the two score the same validation wQL within run-to-run noise,
    # so the default is the one whose objective is the metric.
    loss_weighting: str = "raw"
    # Share of each series' origins decoded per step. Neighbouring origins share most of their
    # targets, so a quarter of them carries nearly the whole signal at a third of the cost, which buys
    # three times the steps (and many more items) in the same budget.
    origin_sample: float = 0.25
    # "auto" drops the day-of-year covariates when the history spans less than a year: then some of
    # the year's days to forecast were never seen, and the network would read the cycle as a time
    # index and extrapolate it. "on" / "off" force them.
    day_of_year: str = "auto"
    # "auto" keeps the day-of-month covariates for weekly and monthly buckets and drops them for
    # daily and hourly ones (``model.features.reads_day_of_month``). "on" / "off" force them.
    day_of_month: str = "auto"
    # Fit a shift of every quantile but the median on the validation targets after training
    # (``model.calibrate``). On the Walmart backtest it brings the P10-P90 coverage from 0.73-0.74
    # to 0.79-0.81 with the outer quantiles' wQL about where it was; on retail it changes nothing
    # beyond noise. (Shifting the median too had made Walmart's wQL 4% worse.)
    calibrate: bool = True
    # Exponential moving average of the weights over optimiser steps, evaluated and kept in place of
    # the raw weights (0 turns it off). Steps of 16 items leave the raw weights noisy from one step
    # to the next; the average of the last few hundred steps is what each epoch's validation scores.
    ema_decay: float = 0.998
    # MQ-CNN members of an ensemble trained at once on a CPU, each on one torch thread (None: as
    # many as torch has threads, at most the ensemble's size; 1: one after another). Batches this
    # small keep a second torch thread inside each operation mostly idle: on 2 cores (`python -m
    # bench training`, Walmart) 43 steps/s on one thread, 51 on two, 79 for two members side by
    # side. Either way an ensemble of K networks takes K times ``max_minutes``: members trained
    # two at a time each get twice the minutes.
    member_threads: int | None = None

    def __post_init__(self) -> None:
        if self.loss_weighting not in ("raw", "scaled"):
            raise ValueError(f"loss_weighting must be 'raw' or 'scaled', got {self.loss_weighting!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.feedback_stages < 0:
            raise ValueError("epochs and batch_size must be >= 1, feedback_stages >= 0")
        for name in ("day_of_year", "day_of_month"):
            check_calendar_choice(name, getattr(self, name))
        if not 0.0 < self.origin_sample <= 1.0:
            raise ValueError(f"origin_sample must be in (0, 1], got {self.origin_sample}")
        if not 0.0 <= self.feedback_share < 1.0:
            raise ValueError(f"feedback_share must be in [0, 1), got {self.feedback_share}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.member_threads is not None and self.member_threads < 1:
            raise ValueError(f"member_threads must be >= 1 (or None), got {self.member_threads}")


def _span_ms(history: History) -> float:
    """Milliseconds from the first bucket's start to the last bucket's end."""
    starts = history.bucket_start_ms()
    if starts.size < 2:
        return 0.0
    bucket_ms = (int(starts[-1]) - int(starts[0])) / (starts.size - 1)
    return int(starts[-1]) - int(starts[0]) + bucket_ms


def covers_a_year(history: History) -> bool:
    """Whether ``history`` spans a whole year, so that every day of the year a forecast can target
    lies in the data at least once; with less, the day-of-year covariates are a time index that the
    network would have to extrapolate."""
    return _span_ms(history) >= 365 * 86_400_000


def unseen_calendar(history: History) -> tuple[str, ...]:
    """Calendar covariates besides the day of the year that ``history`` cannot teach, so a fresh
    network is trained without them: the day of the month when it spans less than a month (the
    cycle would be a time index), Easter's when none of its buckets lies in the weeks around an
    Easter (the network would meet the covariates first in serving, with weights no example moved)."""
    unseen: list[str] = []
    if _span_ms(history) < 31 * 86_400_000:
        unseen += DAY_OF_MONTH
    unseen += silent_calendar(history.bucket_start_ms(), EASTER)
    return tuple(unseen)


def _tensors(
    tt: TrainingTensors, rows: np.ndarray, fb: np.ndarray, start: int, device: torch.device
) -> list[Tensor]:
    """Network inputs of ``rows`` from column ``start`` on, in :meth:`MQCNN.forward_all`'s order."""
    arrays = (
        tt.target[rows, start:],
        tt.observed[rows, start:],
        tt.past_cov[rows, start:],
        tt.future_cov[rows, start:],
        tt.static[rows],
        fb[rows, start:],
    )
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


def _decoder_inputs(
    model: MQCNN, tt: TrainingTensors, rows: np.ndarray, since: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What :meth:`MQCNN.decode` takes besides the feedback, for ``rows`` at every origin from
    ``since`` on: encoding [B,T',C], scale [B,T'], future covariates [B,T',H,Cf], static embedding
    [B,E] and seasonal inputs [B,T',H,S]. Only the ``context_length - 1`` columns before ``since``
    are read, which gives the numbers of a pass over the whole series (the serving window
    equivalence)."""
    start = max(0, since - model.context_length + 1)
    skip = since - start  # columns read for the encoder's sake only: not decoded
    zeros = np.zeros((tt.n_items, tt.n_steps, 0), dtype=np.float32)
    target, observed, past_cov, future_cov, static, _ = _tensors(tt, rows, zeros, start, device)
    return (
        model.encode(target, observed, past_cov)[:, skip:],
        model.rolling_scale(target, observed)[:, skip:],
        future_cov[:, skip:],
        model.embed_static(static),
        model.seasonal_inputs(target, observed)[:, skip:],
    )


def _untracked(tt: TrainingTensors, since: int) -> np.ndarray:
    """Cells [N, T - since] at origins before the item's first observation."""
    return np.arange(since, tt.n_steps)[None, :] < tt.first[:, None]


@torch.no_grad()
def forecast_all(
    model: MQCNN | MQCNNEnsemble | WindowMLP,
    tt: TrainingTensors,
    fb: np.ndarray,
    device: torch.device | str = "cpu",
    batch: int = 256,
    since: int = 0,
) -> np.ndarray:
    """Forecasts at every origin from ``since`` on, [N, T - since, H, Q]; NaN at origins before an
    item's first observation.

    Only the ``context_length - 1`` columns before ``since`` are read, which gives the same numbers as
    a pass over the whole series (the serving window equivalence) at a fraction of the cost. An
    ensemble's forecasts are its members' mean, as its ``forward`` computes them.
    """
    if isinstance(model, MQCNNEnsemble):
        members = list(model.members)
        return sum(forecast_all(m, tt, fb, device, batch, since) for m in members) / len(members)
    model.eval()
    device = torch.device(device)
    out = np.empty((tt.n_items, tt.n_steps - since, model.horizons, model.n_quantiles), dtype=np.float32)
    for lo in range(0, tt.n_items, batch):
        rows = np.arange(lo, min(lo + batch, tt.n_items))
        if isinstance(model, WindowMLP):
            start = max(0, since - model.context_length + 1)
            pred = model.forward_all(*_tensors(tt, rows, fb, start, device))[:, since - start :]
            out[rows] = pred.float().cpu().numpy()
            continue
        enc, scale, future_cov, emb, seasonal = _decoder_inputs(model, tt, rows, since, device)
        feedback = torch.from_numpy(np.ascontiguousarray(fb[rows, since:])).to(device)
        b, t = enc.shape[0], enc.shape[1]
        pred = model.decode(
            enc.reshape(b * t, -1),
            scale.reshape(b * t),
            future_cov.reshape(b * t, model.horizons, -1),
            emb.unsqueeze(1).expand(-1, t, -1).reshape(b * t, -1),
            feedback.reshape(b * t, -1),
            seasonal.reshape(b * t, model.horizons, -1),
        )
        out[rows] = pred.reshape(b, t, model.horizons, model.n_quantiles).float().cpu().numpy()
    out[_untracked(tt, since)] = np.nan
    return out


@torch.no_grad()
def forecast_recurrent(
    model: MQCNN | MQCNNEnsemble,
    tt: TrainingTensors,
    feedback_steps: FeedbackSteps,
    since: int,
    device: torch.device | str = "cpu",
    batch: int = 256,
) -> np.ndarray:
    """Forecasts at every origin from ``since`` on, [N, T - since, H, Q], each made with the
    feedback the serving ledger would hold then: built by ``feedback_steps`` (the ledger's
    recurrence one origin at a time, ``state.feedback.feedback_steps``) from this model's own
    forecasts at the origins before it (none before ``since``).

    This is the serving recurrence, solved exactly: origin by origin, the encodings computed once
    and only the decoder run again. Members that ignore the feedback (a window member) forecast
    once for all origins.
    """
    members = list(model.members) if isinstance(model, MQCNNEnsemble) else [model]
    device = torch.device(device)
    nets = [m.eval() for m in members if isinstance(m, MQCNN)]
    fixed = [m for m in members if not isinstance(m, MQCNN)]
    zero_fb = np.zeros((tt.n_items, tt.n_steps, 0), dtype=np.float32)
    rest = sum(forecast_all(m, tt, zero_fb, device, since=since) for m in fixed) if fixed else 0.0
    inputs = []
    for net in nets:
        parts = [
            _decoder_inputs(net, tt, np.arange(lo, min(lo + batch, tt.n_items)), since, device)
            for lo in range(0, tt.n_items, batch)
        ]
        inputs.append([torch.cat(x) for x in zip(*parts, strict=True)])
    n, t_len, h_len, q_len = tt.n_items, tt.n_steps - since, members[0].horizons, members[0].n_quantiles
    full = np.full((n, tt.n_steps, h_len, q_len), np.nan, dtype=np.float32)
    untracked = _untracked(tt, since)
    # Nothing was forecast before ``since``, so the features there are empty and the replay can
    # start where the first scale's window does. It reads ``full`` (a view) as it goes, so each
    # origin's features see the forecasts written at the origins before it.
    lo = max(0, since - members[0].context_length + 1)
    steps = feedback_steps(full[:, lo:], tt.target[:, lo:], tt.observed[:, lo:] > 0)
    for _ in range(since - lo):
        next(steps)
    for j, fb in zip(range(t_len), steps, strict=False):
        t = since + j
        feedback = torch.from_numpy(fb).to(device)
        pred = 0.0
        for net, (enc, scale, future_cov, emb, seasonal) in zip(nets, inputs, strict=True):
            pred = pred + net.decode(enc[:, j], scale[:, j], future_cov[:, j], emb, feedback, seasonal[:, j])
        step = (pred.float().cpu().numpy() if nets else 0.0) + (rest[:, j] if fixed else 0.0)
        step = step / len(members)
        step[untracked[:, j]] = np.nan
        full[:, t] = step
    return full[:, since:]


def _target_columns(tt: TrainingTensors) -> np.ndarray:
    """The bucket each (origin, horizon) cell targets, [T, H]."""
    return np.arange(tt.n_steps)[:, None] + 1 + np.arange(tt.ahead.shape[2])[None, :]


def _split_cells(tt: TrainingTensors, v: int) -> tuple[np.ndarray, np.ndarray]:
    """Training cells, and validation cells: targets in the last ``v`` buckets, from origins before them.

    No training cell has a target in the last ``v`` buckets, so validation scores unseen demand.
    """
    t = tt.n_steps
    target_col = _target_columns(tt)
    in_val = target_col >= t - v
    origin_before = np.arange(t)[:, None] < t - v
    train = tt.mask * (~in_val)[None]
    val = tt.mask * (in_val & origin_before)[None]
    return train.astype(np.float32), val.astype(np.float32)


def held_out_forecasts(
    model: MQCNN | MQCNNEnsemble,
    history: History,
    args: ModelArgs,
    validation_buckets: int,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The forecasts of ``train``'s held-out cells (targets in the last ``validation_buckets``
    buckets, from origins before them) and their targets: [M, Q] and [M]. Feedback inputs are zero,
    as in a model's first training stage."""
    tt = build_tensors(history, args)
    _, cells = _split_cells(tt, validation_buckets)
    fb = np.zeros((tt.n_items, tt.n_steps, args.n_feedback), dtype=np.float32)
    pred, since, ok = _forecast_cells(model, tt, fb, cells, device)
    return pred[ok], tt.ahead[:, since:][ok]


def feedback_error_gap(
    forecasts: np.ndarray,
    tt: TrainingTensors,
    train_cells: np.ndarray,
    val_cells: np.ndarray,
    v: int,
    quantiles: tuple[float, ...],
) -> dict[str, float]:
    """wQL of the forecasts the feedback features are built from: on training targets of the last
    ``v`` buckets before the validation window (fitted data) and on the validation targets (never
    trained on, as served). A large gap means the feedback features the network trains on describe
    smaller errors than the ones it is served."""
    t = tt.n_steps
    target_col = _target_columns(tt)
    recent = ((target_col >= t - 2 * v) & (target_col < t - v))[None]
    out = {}
    for name, cells in (("in_sample_wql", (train_cells > 0) & recent), ("held_out_wql", val_cells > 0)):
        y = np.where(cells, tt.ahead, np.nan)
        out[name] = round(float(weighted_quantile_loss(y, forecasts, np.asarray(quantiles))[1]), 4)
    return out


def _calibrate(
    model: MQCNN,
    tt: TrainingTensors,
    fb: np.ndarray,
    val_cells: np.ndarray,
    quantiles: tuple[float, ...],
    device,
) -> list[float]:
    """Fit the quantile shifts on the validation cells, set them in ``model`` and return them."""
    pred, since, cells = _forecast_cells(model, tt, fb, val_cells, device)
    scale = np.broadcast_to(_rolling_scale(tt, model.context_length)[:, since:, None], cells.shape)
    shifts = interval_shifts(pred[cells], tt.ahead[:, since:][cells], scale[cells], quantiles)
    with torch.no_grad():
        model.quantile_shift.copy_(torch.from_numpy(shifts))
    return [round(float(x), 4) for x in shifts]


def _first_origin(cells: np.ndarray) -> int:
    """The first origin with any cell in the mask ``cells`` [N, T, H] (0 when there is none)."""
    return int(np.argmax((cells > 0).any(axis=(0, 2))))


def _forecast_cells(
    model: MQCNN | MQCNNEnsemble,
    tt: TrainingTensors,
    fb: np.ndarray,
    cells: np.ndarray,
    device: torch.device | str,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Forecasts at the origins of the mask ``cells`` [N, T, H] and after: the forecasts
    [N, T - since, H, Q], the first such origin ``since``, and the mask from it on (bool)."""
    since = _first_origin(cells)
    return forecast_all(model, tt, fb, device, since=since), since, cells[:, since:] > 0


def _rolling_scale(tt: TrainingTensors, context_length: int) -> np.ndarray:
    """The network's item scale at every origin, [N, T] (numpy twin of :meth:`MQCNN.rolling_scale`)."""
    window = np.zeros((tt.n_items, context_length), dtype=np.float64)
    qty = np.cumsum(np.concatenate([window, tt.target * tt.observed], axis=1), axis=1)
    cnt = np.cumsum(np.concatenate([window, tt.observed.astype(np.float64)], axis=1), axis=1)
    total = qty[:, context_length:] - qty[:, :-context_length]
    count = cnt[:, context_length:] - cnt[:, :-context_length]
    return (1.0 + total / np.maximum(count, 1.0)).astype(np.float32)


class _Objective:
    """The training loss: ``sum(w * pinball) / sum(w * |y|)`` over cells, with ``w = 1`` ("raw") or
    ``1 / scale`` ("scaled").

    In a step the denominator is the mean per-item value times the batch's item count, a constant: a
    step's loss is then an unbiased estimate of the whole objective, and an item weighs the same
    whatever batch it falls in.
    """

    def __init__(
        self, tt: TrainingTensors, cells: np.ndarray, args: ModelArgs, weighting: str, device: torch.device
    ) -> None:
        self.q = np.asarray(args.quantiles, dtype=np.float64)
        self.quantiles = torch.tensor(args.quantiles, dtype=torch.float32, device=device)
        self.scaled = weighting == "scaled"
        self.tt = tt
        self.weight = (
            1.0 / _rolling_scale(tt, args.context_length) if self.scaled else np.ones_like(tt.target)
        )
        per_item = (np.abs(tt.ahead) * cells * self.weight[:, :, None]).sum(axis=(1, 2))
        self.norm = max(float(per_item.mean()), 1e-6)

    def step(self, pred: Tensor, y: Tensor, mask: Tensor, scale: Tensor, items: int) -> Tensor:
        """Loss of a batch of ``items`` items (``pred`` [M,H,Q], the rest [M,H], ``scale`` [M])."""
        weight = (1.0 / scale).unsqueeze(-1) if self.scaled else None
        return pinball_loss(pred, y, mask, self.quantiles, weight) / (self.norm * items)

    def value(self, pred: np.ndarray, cells: np.ndarray, since: int) -> float:
        """The objective over ``cells`` [N,T,H] of forecasts ``pred`` [N, T - since, H, Q]."""
        ok = cells[:, since:] > 0
        y = self.tt.ahead[:, since:][ok]
        w = np.broadcast_to(self.weight[:, since:, None], ok.shape)[ok]
        denom = (w * np.abs(y)).sum()
        return float((w[:, None] * pinball(y, pred[ok], self.q)).sum() / denom) if denom > 0 else float("nan")


def _step_loss(
    model: MQCNN,
    objective: _Objective,
    inputs: list[Tensor],
    y: Tensor,
    mask: Tensor,
    sample: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The forking-sequence loss of one batch: encode every step, decode only origins with a target
    (a random ``sample`` share of them, drawn from ``generator``, the loss divided by it so that it
    stays unbiased)."""
    target, observed, past_cov, future_cov, static, feedback = inputs
    enc = model.encode(target, observed, past_cov)
    scale = model.rolling_scale(target, observed)
    emb = model.embed_static(static)
    seasonal = model.seasonal_inputs(target, observed)
    keep = mask.sum(-1) > 0
    if sample < 1.0:
        drawn = keep & (torch.rand(keep.shape, device=keep.device, generator=generator) < sample)
        # A batch whose few origins all missed the draw keeps them all (unweighted).
        keep, sample = (drawn, sample) if bool(drawn.any()) else (keep, 1.0)
    b_idx, t_idx = torch.nonzero(keep, as_tuple=True)
    pred = model.decode(
        enc[b_idx, t_idx],
        scale[b_idx, t_idx],
        future_cov[b_idx, t_idx],
        emb[b_idx],
        feedback[b_idx, t_idx],
        seasonal[b_idx, t_idx],
    )
    loss = objective.step(
        pred, y[b_idx, t_idx], mask[b_idx, t_idx], scale[b_idx, t_idx].detach(), target.shape[0]
    )
    return loss / sample


def _evaluate(
    model: MQCNN | MQCNNEnsemble,
    tt: TrainingTensors,
    fb: np.ndarray,
    cells: np.ndarray,
    objective: _Objective,
    device,
) -> dict[str, float]:
    """Objective, wQL (and per quantile), outer-interval coverage and forecast volatility on ``cells``
    (a mask [N, T, H])."""
    if not (cells > 0).any():
        return {"loss": np.nan, "wql": np.nan, "coverage": np.nan, "volatility": np.nan}
    pred, since, ok = _forecast_cells(model, tt, fb, cells, device)
    y, p = tt.ahead[:, since:][ok], pred[ok]
    per_q, wql = weighted_quantile_loss(y, p, objective.q)
    result = {
        "loss": objective.value(pred, cells, since),
        "wql": wql,
        "coverage": coverage(y, p[:, 0], p[:, -1]),
        "volatility": volatility(np.where(ok[..., None], pred, np.nan), y),
    }
    result.update({f"wql_q{q:g}": float(v) for q, v in zip(objective.q, per_q, strict=True)})
    return result


def _train_window_member(
    history: History, args: ModelArgs, cfg: TrainConfig, progress: bool
) -> tuple[WindowMLP, dict[str, float]]:
    """Train the :class:`WindowMLP` member by the ffn rung's recipe on ``cfg.device``; returns it (in
    eval mode, on that device) and that rung's report (steps, held-out wQL, seconds)."""
    from model.baselines import FeedForward, ForecastSpec  # the rungs import this module

    spec = ForecastSpec(
        horizons=args.horizons,
        quantiles=args.quantiles,
        context_length=args.context_length,
        seed=cfg.seed + args.ensemble,
        max_seconds=cfg.max_minutes * 60.0,
    )
    # The network's static columns are the history's first n_static (build_tensors).
    head = dataclasses.replace(history, static=dict(list(history.static.items())[: args.n_static]))
    rung = FeedForward(
        spec,
        hidden=args.window_member,
        vocab=args.static_vocab,
        static_dim=args.static_dim,
        progress=progress,
        device=cfg.device,
        day_of_month=cfg.day_of_month,
    )
    # Its own seed, and torch's random state as it found it (the CPU's, and the GPU's it trains
    # on): the MQ-CNNs then train exactly as they would without it.
    device = torch.device(cfg.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        rung.fit(head, head.n_buckets)
    assert rung.net is not None
    return rung.net.eval(), dict(rung.info)


@dataclass
class _Member:
    """One network in training and what it owns: optimiser, weight average, shuffling, best weights.

    ``elapsed`` is how much of its time budget the member has used: its own training plus the work
    all members share (building the tensors, the feedback stages' forecasts), so that with one
    member it is simply the time since training began.
    """

    model: MQCNN
    opt: torch.optim.Optimizer
    average: WeightAverage | None
    rng: np.random.Generator
    # Its own draws of the origins each step decodes, so that members trained side by side draw
    # what they would one after the other.
    draws: torch.Generator
    elapsed: float = 0.0
    step: int = 0
    best: dict = field(default_factory=dict)


def member_workers(cfg: TrainConfig, members: int) -> int:
    """How many of ``members`` MQ-CNNs train at once under ``cfg``: ``member_threads``, by default
    as many as torch has CPU threads, at most ``members``; one at a time on a GPU."""
    if torch.device(cfg.device).type != "cpu":
        return 1
    # ``train`` has set torch's threads to ``cfg.threads`` by the time it asks.
    return max(1, min(members, cfg.member_threads or torch.get_num_threads()))


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one CPU thread inside the block, its thread count given back after: networks
    trained side by side on threads take one each (the setting is the whole process's)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def side_by_side(
    jobs: list[Callable[[], _Out]], workers: int, stop: threading.Event, name: str
) -> list[_Out]:
    """The results of ``jobs``, in order, run on ``workers`` threads named ``name`` with torch on one
    CPU thread each. A job that fails, or an interrupt while waiting, sets ``stop`` before the
    error is raised: the jobs watch it and end at their next step, instead of the pool waiting
    for them to train out their budgets."""

    def stopping_others(job: Callable[[], _Out]) -> _Out:
        try:
            return job()
        except BaseException:
            stop.set()
            raise

    with one_torch_thread(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        futures = [pool.submit(stopping_others, job) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            stop.set()
            raise


def member_budget_s(max_minutes: float, members: int, workers: int) -> float:
    """Seconds each of ``members`` networks trains for when ``workers`` train at once: the
    ensemble takes ``members`` x ``max_minutes`` of the clock whatever ``workers`` is."""
    return max_minutes * 60.0 * members / math.ceil(members / workers)


def train(
    history: History,
    args: ModelArgs,
    cfg: TrainConfig,
    feedback_fn: FeedbackFn | None = None,
    progress: bool = True,
    model: MQCNN | MQCNNEnsemble | None = None,
) -> tuple[MQCNN | MQCNNEnsemble, dict]:
    """Train an :class:`MQCNN` (an :class:`MQCNNEnsemble` of ``args.ensemble``) on ``history``;
    returns the network (on the CPU, in eval mode) and a report (losses, validation wQL per
    quantile, coverage, volatility, seconds, parameters, a log per epoch).

    The targets of the last ``validation_buckets`` buckets are held out for choosing the weights:
    within the last stage, those with the best validation wQL are kept (earlier stages saw other
    feedback features, so their weights do not fit the features served). ``model`` continues
    training a network built with ``args`` (from a checkpoint, say), in place, instead of a fresh one.

    Ensemble members train from their own seeds (``seed + k``), ``cfg.member_threads`` of them at
    once on a CPU (one after another on a GPU), and an ensemble of K networks takes K times
    ``max_minutes`` either way: with W at once, each member trains for K / ceil(K / W) times
    ``max_minutes``. Each feedback stage
    builds its features from the mean of all members' forecasts, which is what the service serves
    and its ledger scores; each member keeps its own best weights and calibrates its own interval.

    With ``args.window_member`` a :class:`WindowMLP` joins the ensemble. It trains first, by the
    backtest's ffn recipe (``model.baselines.FeedForward``: random windows, its own held-out last
    buckets, the same ``max_minutes``, seed ``seed + ensemble``), and then stays fixed: the MQ-CNNs'
    feedback stages and the validation scores see the whole ensemble's mean, as served. It reads
    the day of the year even where the MQ-CNNs leave it out, ignores the day of the month and
    Easter's where they do (``WindowMLP.ignore_calendar``), and takes no calibration shift. A ``model``
    given to continue keeps its window member as it is.
    """
    t_start = time.monotonic()
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    tt = build_tensors(history, args)
    v = cfg.validation_buckets if cfg.validation_buckets is not None else args.horizons
    v = min(v, max(1, tt.n_steps // 4))
    train_cells, val_cells = _split_cells(tt, v)
    fresh = model is None
    window_info: dict[str, float] = {}
    # ``final`` is what is returned and what the feedback stages forecast with: the members' mean.
    final: MQCNN | MQCNNEnsemble
    if model is not None:
        final, nets = model, member_networks(model)
        if len(nets) != args.ensemble:
            raise ValueError(
                f"the model has {len(nets)} member network(s), the arguments say {args.ensemble}"
            )
        if len(window_members(model)) != (1 if args.window_member else 0):
            raise ValueError("the model's window member does not match the arguments' window_member")
    else:
        nets = []
        for k in range(args.ensemble):
            torch.manual_seed(cfg.seed + k)
            nets.append(MQCNN(args))
        extra: list[torch.nn.Module] = []
        if args.window_member:
            window, window_info = _train_window_member(history, args, cfg, progress)
            extra.append(window)
        final = nets[0] if len(nets) == 1 and not extra else MQCNNEnsemble([*nets, *extra])
    drop_day_of_year = cfg.day_of_year == "off" or (
        cfg.day_of_year == "auto" and fresh and not covers_a_year(history)
    )
    # A network trained further keeps its weights for the day of the month unless told "off".
    drop_day_of_month = not reads_day_of_month(cfg.day_of_month, history.freq) and (
        fresh or cfg.day_of_month == "off"
    )
    masked = (
        (DAY_OF_YEAR if drop_day_of_year else ())
        + (DAY_OF_MONTH if drop_day_of_month else ())
        + (unseen_calendar(history) if fresh else ())
    )
    members: list[_Member] = []
    for k, net in enumerate(nets):
        net.to(device)
        if masked:
            net.mask_covariates(masked)
        members.append(
            _Member(
                model=net,
                opt=adamw(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
                average=WeightAverage(net, cfg.ema_decay) if cfg.ema_decay > 0 else None,
                rng=np.random.default_rng(cfg.seed + k),
                draws=torch.Generator(device=device).manual_seed(cfg.seed + k),
            )
        )
    final.to(device)  # the window member too (trained on the CPU, or continued from a checkpoint)
    objective = _Objective(tt, train_cells, args, cfg.loss_weighting, device)
    fb = np.zeros((tt.n_items, tt.n_steps, args.n_feedback), dtype=np.float32)

    stages = cfg.feedback_stages if (feedback_fn is not None and args.use_feedback) else 0
    share = cfg.feedback_share if stages else 0.0
    workers = member_workers(cfg, len(members))
    budget_s = member_budget_s(cfg.max_minutes, len(members), workers)
    plan = [(0, max(1, round(cfg.epochs * (1 - share))), budget_s * (1 - share))]
    plan += [
        (s + 1, max(1, round(cfg.epochs * share / stages)), budget_s * share / stages) for s in range(stages)
    ]
    steps_per_epoch = math.ceil(tt.n_items / cfg.batch_size)
    total_steps = sum(e for _, e, _ in plan) * steps_per_epoch

    log: list[dict] = []
    gap: dict[str, float] = {}
    # The bar counts steps up to the epoch cap, but the clock usually ends the run first: it says
    # the time budget instead of a remaining time estimated from the cap.
    bar = tqdm(
        total=total_steps * len(members),
        disable=not progress,
        desc=f"train ({len(members) * cfg.max_minutes:.3g} min budget)",
        unit="step",
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]",
    )
    bar_lock = threading.Lock()  # members training side by side share the bar
    stop = threading.Event()  # set when one of them fails or the run is interrupted: the others end

    def train_stage(k: int, m: _Member, stage: int, epochs: int, stage_budget: float) -> list[dict]:
        """Up to ``epochs`` epochs of member ``k`` within ``stage_budget`` seconds; its log entries."""
        entries: list[dict] = []
        stage_start = time.monotonic()
        for epoch in range(epochs):
            m.model.train()
            order = m.rng.permutation(tt.n_items)
            total, seen = 0.0, 0
            out_of_time = False
            for lo in range(0, tt.n_items, cfg.batch_size):
                if stop.is_set():
                    return entries
                if seen and time.monotonic() - stage_start > stage_budget:
                    out_of_time = True
                    break
                # Cosine decay over the run, by steps or by time, whichever is further along.
                # Time counts in whole percent, so a run the step count bounds keeps the same
                # rates (and the same weights for a seed) however fast the machine is.
                used = m.elapsed + time.monotonic() - stage_start
                time_done = math.floor(100.0 * used / budget_s) / 100.0
                done = min(1.0, max(m.step / total_steps, time_done))
                for group in m.opt.param_groups:
                    group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * done)))
                rows = order[lo : lo + cfg.batch_size]
                y = torch.from_numpy(tt.ahead[rows]).to(device)
                mask = torch.from_numpy(train_cells[rows]).to(device)
                loss = _step_loss(
                    m.model,
                    objective,
                    _tensors(tt, rows, fb, 0, device),
                    y,
                    mask,
                    cfg.origin_sample,
                    m.draws,
                )
                m.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.model.parameters(), 1.0)
                m.opt.step()
                if m.average is not None:
                    m.average.update()
                total += loss.item() * rows.size
                seen += rows.size
                m.step += 1
                with bar_lock:
                    bar.update(1)
            with averaged(m.average):  # score (and keep) the averaged weights, then train on
                val = _evaluate(m.model, tt, fb, val_cells, objective, device)
                entry = {"stage": stage, "epoch": epoch, "train_loss": total / seen, "items_seen": seen}
                if len(members) > 1:
                    entry["member"] = k
                entry.update({f"val_{name}": x for name, x in val.items()})
                entries.append(entry)
                with bar_lock:
                    bar.set_postfix_str(
                        f"stage {stage} loss {entry['train_loss']:.4f} val wQL {val['wql']:.4f}"
                        + (f" (member {k})" if len(members) > 1 else "")
                    )
                # NaN compares false: without validation cells (validation_buckets=0) the
                # latest weights win.
                if not m.best or not val["wql"] >= m.best["entry"]["val_wql"]:
                    m.best = {"entry": entry, "state": copy.deepcopy(m.model.state_dict())}
            if out_of_time:
                break
        m.elapsed += time.monotonic() - stage_start
        return entries

    # The window member trained with a budget of its own; the MQ-CNNs' clocks leave it out.
    setup_s = time.monotonic() - t_start - window_info.get("seconds", 0.0)
    for m in members:
        m.elapsed = setup_s
    for stage, epochs, stage_budget in plan:
        if stage > 0:
            assert feedback_fn is not None
            t0 = time.monotonic()
            # The next stage's features come from the weights each member keeps, as served: the
            # members' mean.
            with contextlib.ExitStack() as stack:
                for m in members:
                    stack.enter_context(averaged(m.average))
                forecasts = forecast_all(final, tt, fb, device)
            fb = np.asarray(feedback_fn(forecasts, tt.target, tt.observed > 0), dtype=np.float32)
            if not gap and val_cells.any():
                gap = feedback_error_gap(forecasts, tt, train_cells, val_cells, v, args.quantiles)
            shared_s = time.monotonic() - t0
            for m in members:
                m.best = {}
                m.elapsed += shared_s
        jobs = [(k, m, stage, epochs, stage_budget) for k, m in enumerate(members)]
        if workers == 1:
            for job in jobs:
                log.extend(train_stage(*job))
            continue
        stages = side_by_side([functools.partial(train_stage, *job) for job in jobs], workers, stop, "member")
        for entries in stages:
            log.extend(entries)
    bar.close()
    for m in members:
        m.model.load_state_dict(m.best["state"])
        m.model.eval()
    if final is members[0].model:
        chosen = members[0].best["entry"]  # scored when it was kept
    else:
        chosen = {
            "stage": members[0].best["entry"]["stage"],
            "epoch": members[0].best["entry"]["epoch"],
            "train_loss": float(np.mean([m.best["entry"]["train_loss"] for m in members])),
        }
        scores = _evaluate(final, tt, fb, val_cells, objective, device)
        chosen.update({f"val_{k}": x for k, x in scores.items()})
    calibration: dict = {}
    if cfg.calibrate and val_cells.any():
        shifts = [_calibrate(m.model, tt, fb, val_cells, args.quantiles, device) for m in members]
        scores = _evaluate(final, tt, fb, val_cells, objective, device)
        calibration = {
            "shifts": shifts[0] if final is members[0].model else shifts,
            "val_wql_before": chosen["val_wql"],
            "val_wql_after": scores["wql"],
            "val_coverage_before": chosen["val_coverage"],
            "val_coverage_after": scores["coverage"],
        }
        # The report describes the model returned: calibrated (in-sample for the shifts).
        chosen = {**chosen, **{f"val_{k}": x for k, x in scores.items()}}
    report = {
        "train_loss": chosen["train_loss"],
        "val_loss": chosen["val_loss"],
        "val_wql": chosen["val_wql"],
        "val_wql_per_quantile": {k[9:]: chosen[k] for k in chosen if k.startswith("val_wql_q")},
        "val_coverage": chosen["val_coverage"],
        "val_volatility": chosen["val_volatility"],
        "loss_weighting": cfg.loss_weighting,
        "masked_covariates": nets[0].masked_covariates(),
        "validation_buckets": v,
        "chosen": {"stage": chosen["stage"], "epoch": chosen["epoch"]},
        "calibration": calibration,
        "feedback_error_gap": gap,
        "epochs_run": len(log),
        "stages": stages,
        "seconds": round(time.monotonic() - t_start, 1),
        "n_params": n_parameters(final),
        "items": tt.n_items,
        "buckets": tt.n_steps,
        "config": asdict(cfg),
        "log": log,
    }
    if window_info:
        report["window_member"] = {"seed": cfg.seed + args.ensemble, **window_info}
    if len(members) > 1:
        report["members"] = [
            {
                "seed": cfg.seed + k,
                "chosen": {"stage": m.best["entry"]["stage"], "epoch": m.best["entry"]["epoch"]},
                "val_wql": m.best["entry"]["val_wql"],
                "steps": m.step,
            }
            for k, m in enumerate(members)
        ]
    return final.cpu(), report
