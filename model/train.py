"""Training with forking sequences: a forecast at every step of every series, in one pass.

Stage 0 trains with empty feedback. Each feedback stage then forecasts every origin with the model
so far, hands those forecasts to ``feedback_fn`` (the serving ledger's recurrence, injected by the
caller because ``model/`` does not know the state package) and goes on training with the features it
returns, so the network learns from the inputs the service will give it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from model.dataset import TrainingTensors, build_tensors
from model.history import History
from model.loss import pinball_loss
from model.metrics import coverage, weighted_quantile_loss
from model.network import MQCNN, ModelArgs, n_parameters

FeedbackFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TrainConfig:
    """How to train; the defaults fit the bundled data sets on a 2-core CPU in a few minutes."""

    epochs: int = 60
    batch_size: int = 64  # items per step; each step covers their whole series
    lr: float = 3e-3
    weight_decay: float = 1e-5
    seed: int = 0
    max_minutes: float = 10.0
    threads: int | None = None
    device: str = "cpu"
    feedback_stages: int = 1
    feedback_share: float = 0.35  # of the epochs and of the time budget
    validation_buckets: int | None = None  # default: the horizon
    # "scaled" divides each cell's loss by the item's demand level: every item counts alike.
    # "raw" sums losses in units, like wQL itself, so big sellers dominate.
    loss_weighting: str = "raw"


def _batch(tt: TrainingTensors, rows: np.ndarray, fb: np.ndarray, device: torch.device) -> list[torch.Tensor]:
    b = rows.size
    t = tt.n_steps
    fut = np.broadcast_to(tt.future_cov, (b, *tt.future_cov.shape))
    arrays = [tt.target[rows], tt.observed[rows], tt.past_cov[rows], fut, tt.static[rows], fb[rows]]
    out = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]
    assert out[0].shape == (b, t)
    return out


@torch.no_grad()
def forecast_all(
    model: MQCNN, tt: TrainingTensors, fb: np.ndarray, device: torch.device, batch: int = 256
) -> np.ndarray:
    """Forecasts at every origin [N, T, H, Q]; NaN at origins before an item's first observation."""
    model.eval()
    out = np.empty((tt.n_items, tt.n_steps, model.horizons, model.n_quantiles), dtype=np.float32)
    for start in range(0, tt.n_items, batch):
        rows = np.arange(start, min(start + batch, tt.n_items))
        out[rows] = model.forward_all(*_batch(tt, rows, fb, device)).float().cpu().numpy()
    untracked = np.arange(tt.n_steps)[None, :] < tt.first[:, None]
    out[untracked] = np.nan
    return out


def _validation_mask(tt: TrainingTensors, v: int) -> tuple[np.ndarray, np.ndarray]:
    """Training cells, and validation cells: targets in the last ``v`` buckets, from origins before them."""
    t, h = tt.n_steps, tt.ahead.shape[2]
    target_col = np.arange(t)[:, None] + 1 + np.arange(h)[None, :]
    in_val = target_col >= t - v
    origin_before = np.arange(t)[:, None] < t - v
    train = tt.mask * (~in_val)[None]
    val = tt.mask * (in_val & origin_before)[None]
    return train.astype(np.float32), val.astype(np.float32)


def evaluate(
    model: MQCNN,
    tt: TrainingTensors,
    fb: np.ndarray,
    cells: np.ndarray,
    quantiles: tuple,
    device: torch.device,
) -> tuple[float, float]:
    """wQL and outer-interval coverage of the model's forecasts on the given cells (a mask [N, T, H])."""
    pred = forecast_all(model, tt, fb, device)
    ok = cells > 0
    if not ok.any():
        return float("nan"), float("nan")
    y, p = tt.ahead[ok], pred[ok]
    _, wql = weighted_quantile_loss(y, p, np.asarray(quantiles))
    return wql, coverage(y, p[:, 0], p[:, -1])


def train(
    history: History,
    args: ModelArgs,
    cfg: TrainConfig,
    feedback_fn: FeedbackFn | None = None,
    progress: bool = True,
) -> tuple[MQCNN, dict]:
    """Train an :class:`MQCNN` on ``history``; returns the best model (by validation wQL) and a report."""
    t_start = time.monotonic()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    tt = build_tensors(history, args)
    v = cfg.validation_buckets if cfg.validation_buckets is not None else args.horizons
    v = min(v, max(1, tt.n_steps // 4))
    train_mask, val_mask = _validation_mask(tt, v)
    model = MQCNN(args).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    quantiles = torch.tensor(args.quantiles, dtype=torch.float32, device=device)
    fb = np.zeros((tt.n_items, tt.n_steps, args.n_feedback), dtype=np.float32)

    stages = cfg.feedback_stages if (feedback_fn is not None and args.use_feedback) else 0
    share = cfg.feedback_share if stages else 0.0
    budget_s = cfg.max_minutes * 60.0
    plan = [(0, max(1, round(cfg.epochs * (1 - share))), budget_s * (1 - share))]
    for s in range(stages):
        plan.append((s + 1, max(1, round(cfg.epochs * share / stages)), budget_s * share / stages))

    steps_per_epoch = math.ceil(tt.n_items / cfg.batch_size)
    total_steps = sum(e for _, e, _ in plan) * steps_per_epoch
    history_log: list[dict] = []
    best: tuple[float, dict, float] | None = None
    bar = tqdm(total=total_steps, disable=not progress, desc="train", unit="step")
    for stage, epochs, stage_budget in plan:
        if stage > 0:
            assert feedback_fn is not None
            fb = feedback_fn(forecast_all(model, tt, fb, device), tt.target, tt.observed > 0).astype(
                np.float32
            )
            best = None  # features changed: the earlier best is no longer comparable
        stage_start = time.monotonic()
        for epoch in range(epochs):
            model.train()
            order = rng.permutation(tt.n_items)
            total, weight = 0.0, 0.0
            for start in range(0, tt.n_items, cfg.batch_size):
                rows = order[start : start + cfg.batch_size]
                inputs = _batch(tt, rows, fb, device)
                pred = model.forward_all(*inputs)
                y = torch.from_numpy(tt.ahead[rows]).to(device)
                m = torch.from_numpy(train_mask[rows]).to(device)
                if cfg.loss_weighting == "scaled":
                    scale = model.rolling_scale(inputs[0], inputs[1]).detach().unsqueeze(-1)
                    loss = pinball_loss(pred, y, m, quantiles, 1.0 / scale) / m.sum().clamp(min=1.0)
                else:
                    loss = pinball_loss(pred, y, m, quantiles) / (y.abs() * m).sum().clamp(min=1.0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                total += loss.item() * rows.size
                weight += rows.size
                bar.update(1)
            val, cov = evaluate(model, tt, fb, val_mask, args.quantiles, device)
            history_log.append(
                {
                    "stage": stage,
                    "epoch": epoch,
                    "train_loss": total / weight,
                    "val_wql": val,
                    "val_coverage": cov,
                }
            )
            bar.set_postfix_str(f"stage {stage} loss {total / weight:.4f} val wQL {val:.4f}", refresh=False)
            if best is None or (np.isfinite(val) and val < best[0]):
                best = (val, copy.deepcopy(model.state_dict()), cov)
            if time.monotonic() - stage_start > stage_budget:
                break
    bar.close()
    assert best is not None
    model.load_state_dict(best[1])
    model.eval()
    report = {
        "val_wql": best[0],
        "val_coverage": best[2],
        "validation_buckets": v,
        "epochs_run": len(history_log),
        "stages": stages,
        "seconds": round(time.monotonic() - t_start, 1),
        "n_params": n_parameters(model),
        "items": tt.n_items,
        "buckets": tt.n_steps,
        "config": asdict(cfg),
        "log": history_log,
    }
    return model.cpu(), report
