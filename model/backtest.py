"""Rolling-origin backtest: every rung of the ladder on the same data, origins and cells.

Each forecaster is fitted once, on the columns before the first evaluation origin, then forecasts at
every evaluation origin. An origin ``t`` is the last closed bucket; its forecast covers ``t+1..t+H``.

No forecaster can see the future:

- ``fit`` receives the history cut at the training boundary (``history.head(until)``);
- ``predict`` receives the history cut after the last origin it is asked about, and for the origins
  named by ``leak_check`` the backtest predicts again from the history cut right after that origin
  and asserts both answers agree (:class:`LeakageError` otherwise). A forecaster that reads a bucket
  after its origin cannot pass this, whatever it does inside.

Scored cells: the target bucket was observed (a missing row is unknown, not zero) and the item had
an observed bucket at or before the origin (the service tracks an item from its first sale). Every
rung is scored on exactly these cells, and a rung that leaves one of them without a forecast fails.

Metrics per rung: wQL per quantile and their mean (``2 * sum(pinball) / sum(|y|)``), the share of
actuals inside the outer interval (P10..P90 by default), forecast volatility and the fit / predict
wall time. Volatility needs two forecasts of the same bucket from successive origins, which
evaluation origins spaced ``H`` apart never give, so each evaluation origin ``t`` gets a companion
forecast at ``t + 1`` (not scored for accuracy): volatility is the mean absolute change of the
median between the forecast of a bucket from ``t`` (horizon ``h+1``) and from ``t+1`` (horizon
``h``), over scored buckets, divided by the mean |y| of the scored cells (``model.metrics.volatility``).

Each item also gets its demand class (smooth, erratic, intermittent, lumpy; ``model.demand_class``)
from the buckets before the first origin, and every rung's wQL is reported per class beside the
class's share of the scored demand: where a rung's lead comes from, and how much of the demand is
of a kind no forecaster of the item's own history does well on. Beside the rungs it scores two
hindsight references, quantiles fitted on the scored actuals themselves (``model.hindsight``): not
forecasters, but how much error is left once each item's demand distribution is known.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from model.baselines import (
    CONTEXT,
    HORIZONS,
    FeedbackReplay,
    Forecaster,
    ForecastSpec,
    first_observed,
    make_forecaster,
)
from model.demand_class import CLASSES, demand_classes
from model.errors import ModelError
from model.hindsight import hindsight_rows
from model.history import History
from model.metrics import (
    as_published,
    coverage,
    quantile_hits,
    quantiles_cross,
    volatility,
    weighted_quantile_loss,
)

#: Spacing of evaluation origins by bucket unit.
SPACING = {"h": 24, "D": 14, "W": 4, "M": 3}


class LeakageError(ModelError, AssertionError):
    """A forecaster's answer at an origin changed when the buckets after that origin were removed."""


@dataclass(frozen=True)
class BacktestConfig:
    """Where the origins are and what is forecast; ``None`` means the bucket unit's default."""

    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    horizons: int | None = None  # D 14, W 8, M 6, h 24
    context_length: int | None = None  # D 56, W 52, M 24, h 168
    n_origins: int = 8
    spacing: int | None = None  # buckets between evaluation origins: D 14, W 4, M 3, h 24
    last_origin: int | None = None  # default: the last whose every horizon lies inside the data
    seed: int = 0
    max_seconds_per_rung: float = 180.0  # fit budget of the rungs that train iteratively
    calibrate: bool = True  # calibrate the MQ-CNN rungs' intervals (model/calibrate.py)
    feedback_window: int | None = None  # scored buckets the feedback rung attends over (None: default)
    recent: int | None = None  # latest buckets the MQ-CNN rungs' decoder reads directly (None: default)
    ema_decay: float | None = None  # weight averaging of the ffn and MQ-CNN rungs (None: their default)
    ensemble: int | None = None  # networks averaged by the ffn and MQ-CNN rungs (None: the model's default)
    window_member: int | None = None  # hidden width of the MQ-CNN rungs' WindowMLP member (0: none)
    feedback_previous: bool | None = None  # feedback rung reads its previous forecasts (None: default)
    leak_check: str = "first"  # "first", "all" (every evaluation origin) or "none"
    volatility_pairs: bool = True  # also forecast at t+1 for every evaluation origin t
    # torch CPU threads during the run (None leaves torch's setting, one per core); an ensemble's
    # networks (the ffn rung's, the MQ-CNNs) train this many at a time (model.train.member_workers)
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
        if self.n_origins < 1:
            raise ValueError("n_origins must be >= 1")
        if self.spacing is not None and self.spacing < 1:
            raise ValueError("spacing must be >= 1")
        if self.leak_check not in ("first", "all", "none"):
            raise ValueError(f"leak_check must be first, all or none, got {self.leak_check!r}")


@dataclass
class Plan:
    """The concrete origins of a backtest on one history."""

    horizons: int
    context_length: int
    origins: np.ndarray  # int64 [O], evaluation origins, increasing
    companions: np.ndarray  # int64 [O'], origins t+1 for the volatility pairs (may be empty)
    until: int  # training columns are [0, until): the first origin and everything before it

    @property
    def all_origins(self) -> np.ndarray:
        return np.unique(np.concatenate([self.origins, self.companions]))


def make_plan(history: History, cfg: BacktestConfig) -> Plan:
    """Resolve the defaults of ``cfg`` against ``history``; raises ValueError when it does not fit."""
    hz = cfg.horizons or HORIZONS.get(history.freq, 14)
    ctx = cfg.context_length or CONTEXT.get(history.freq, 56)
    spacing = cfg.spacing or SPACING.get(history.freq, hz)
    t = history.n_buckets
    last = cfg.last_origin if cfg.last_origin is not None else t - 1 - hz
    if last > t - 2:
        raise ValueError(f"last origin {last} leaves nothing to score in {t} buckets")
    origins = last - spacing * np.arange(cfg.n_origins - 1, -1, -1, dtype=np.int64)
    if origins[0] < 1:
        raise ValueError(
            f"{cfg.n_origins} origins {spacing} buckets apart ending at {last} need more than "
            f"the {t} buckets of the history"
        )
    companions = origins + 1 if cfg.volatility_pairs else np.zeros(0, dtype=np.int64)
    companions = companions[companions < t - 1]
    return Plan(hz, ctx, origins, companions, int(origins[0]) + 1)


def spec_for(history: History, cfg: BacktestConfig) -> ForecastSpec:
    """The :class:`ForecastSpec` every rung of a backtest of ``history`` gets."""
    plan = make_plan(history, cfg)
    return ForecastSpec(
        horizons=plan.horizons,
        quantiles=cfg.quantiles,
        context_length=plan.context_length,
        seed=cfg.seed,
        max_seconds=cfg.max_seconds_per_rung,
        calibrate=cfg.calibrate,
        feedback_window=cfg.feedback_window,
        recent=cfg.recent,
        ema_decay=cfg.ema_decay,
        ensemble=cfg.ensemble,
        window_member=cfg.window_member,
        feedback_previous=cfg.feedback_previous,
    )


def build_forecasters(
    names: Sequence[str],
    history: History,
    cfg: BacktestConfig,
    feedback_replay: FeedbackReplay | None = None,
) -> list[Forecaster]:
    """The named rungs (keys of ``model.baselines.RUNGS``), built for a backtest of ``history``."""
    spec = spec_for(history, cfg)
    return [make_forecaster(n, spec, feedback_replay) for n in names]


#: How far a quantile's level may lie outside its shares of actuals below / at or below it and still
#: count as calibrated: half the 0.05 the product allows the P10-P90 interval's coverage, so that
#: two outer quantiles within it keep the interval within that.
CALIBRATION_TOLERANCE = 0.025


@dataclass
class RungResult:
    """Scores and forecasts of one rung."""

    name: str
    wql: float
    wql_per_quantile: list[float]
    wql_by_horizon: list[float]
    coverage: float
    volatility: float
    train_seconds: float
    predict_seconds: float
    forecasts: np.ndarray = field(repr=False)  # float64 [N, O, H, Q] at the evaluation origins, as published
    info: dict = field(default_factory=dict)
    # Per quantile: share of actuals strictly below the forecast, and at or below it (calibrated:
    # the quantile level lies between them; see model.metrics.quantile_hits).
    below: list[float] = field(default_factory=list)
    at_or_below: list[float] = field(default_factory=list)

    def row(self, quantiles: Sequence[float]) -> dict[str, object]:
        """A flat table row."""
        out: dict[str, object] = {"rung": self.name, "wql": self.wql}
        out.update(
            {f"wql_p{round(q * 100):d}": v for q, v in zip(quantiles, self.wql_per_quantile, strict=True)}
        )
        out.update(
            {
                f"coverage_p{round(quantiles[0] * 100):d}_p{round(quantiles[-1] * 100):d}": self.coverage,
                "volatility": self.volatility,
                "train_s": self.train_seconds,
                "predict_s": self.predict_seconds,
            }
        )
        for q, lt, le in zip(quantiles, self.below, self.at_or_below, strict=True):
            out[f"below_p{round(q * 100):d}"] = lt
            out[f"at_or_below_p{round(q * 100):d}"] = le
        return out

    def calibration_row(self, quantiles: Sequence[float]) -> dict[str, str]:
        """Each quantile's shares below and at or below, as ``below-at_or_below`` text, marked "(off)"
        where the level lies more than :data:`CALIBRATION_TOLERANCE` outside them."""
        out = {"rung": self.name}
        for q, lt, le in zip(quantiles, self.below, self.at_or_below, strict=True):
            mark = "" if lt - CALIBRATION_TOLERANCE <= q <= le + CALIBRATION_TOLERANCE else " (off)"
            out[f"p{round(q * 100):d}"] = f"{lt:.3f}-{le:.3f}{mark}"
        return out


@dataclass
class BacktestResult:
    """Everything a backtest measured; :meth:`save` writes the tables and the plots."""

    config: BacktestConfig
    plan: Plan
    freq: str
    item_ids: np.ndarray
    bucket_start_ms: np.ndarray  # int64 [T]
    qty: np.ndarray  # float32 [N, T] (for plots)
    observed: np.ndarray  # bool [N, T]
    actuals: np.ndarray  # float64 [N, O, H]: demand at the scored cells, NaN elsewhere
    rungs: list[RungResult]
    source: str = ""
    # Each item's demand class (model.demand_class) from the buckets before the first origin.
    classes: np.ndarray | None = None

    @property
    def quantiles(self) -> tuple[float, ...]:
        return self.config.quantiles

    @property
    def scored_cells(self) -> int:
        return int(np.isfinite(self.actuals).sum())

    def rows(self) -> list[dict[str, object]]:
        """One row per rung, in the order they ran."""
        return [r.row(self.quantiles) for r in self.rungs]

    def hindsight_rows(self) -> list[dict[str, object]]:
        """The hindsight references' scores on the same cells (:mod:`model.hindsight`: quantiles
        fitted on the scored actuals, so no forecaster could match them; how much error is left
        once each item's demand distribution is known)."""
        if not np.isfinite(self.actuals).any():
            return []
        return hindsight_rows(self.actuals, self.quantiles)

    def to_markdown(self) -> str:
        """The table as GitHub Markdown, then the calibration table (each quantile's share of actuals
        below it and at or below it; "(off)" where its level lies outside that range), wQL by
        demand class (:meth:`class_rows`) and the hindsight references (:meth:`hindsight_rows`)."""
        if not self.rungs:
            return ""
        main = [
            {k: v for k, v in r.row(self.quantiles).items() if not k.startswith(("below", "at_or"))}
            for r in self.rungs
        ]
        tables = [_markdown(main)]
        calibration = [r.calibration_row(self.quantiles) for r in self.rungs if r.below]
        if calibration:
            tables.append(_markdown(calibration))
        by_class = self.class_rows()
        if by_class:
            tables.append(_markdown(by_class))
        hindsight = self.hindsight_rows()
        if hindsight:
            tables.append(_markdown(hindsight))
        return "\n\n".join(tables)

    def class_rows(self) -> list[dict[str, object]]:
        """Per demand class with scored cells: its items, its shares of the scored cells and of their
        demand, and each rung's wQL over the class's cells (rows in :data:`CLASSES` order)."""
        if self.classes is None:
            return []
        scored = np.isfinite(self.actuals)
        volume = np.where(scored, np.abs(self.actuals), 0.0)
        total_cells, total_volume = max(int(scored.sum()), 1), float(volume.sum())
        q = np.asarray(self.quantiles)
        rows = []
        for code, name in enumerate(CLASSES):
            members = self.classes == code
            cells = scored & members[:, None, None]
            if not cells.any():
                continue
            row: dict[str, object] = {
                "class": name,
                "items": int((members & scored.any(axis=(1, 2))).sum()),
                "cell_share": float(cells.sum() / total_cells),
                "volume_share": float(volume[members].sum() / total_volume)
                if total_volume > 0
                else float("nan"),
            }
            for r in self.rungs:
                _, row[f"wql_{r.name}"] = weighted_quantile_loss(
                    self.actuals[members], r.forecasts[members], q
                )
            rows.append(row)
        return rows

    def write_csv(self, path: Path) -> None:
        """The table as CSV."""
        _write_rows(path, self.rows(), empty_header=["rung"])

    def summary(self) -> dict:
        """JSON-ready description of the run (config, origins, per-horizon wQL, rung info)."""
        dates = self.bucket_start_ms.astype("datetime64[ms]").astype(f"datetime64[{_unit(self.freq)}]")
        return {
            "source": self.source,
            "freq": self.freq,
            "items": int(self.item_ids.size),
            "buckets": int(self.bucket_start_ms.size),
            "horizons": self.plan.horizons,
            "context_length": self.plan.context_length,
            "train_buckets": self.plan.until,
            "origins": [str(dates[o]) for o in self.plan.origins],
            "scored_cells": self.scored_cells,
            "config": asdict(self.config),
            "table": self.rows(),
            "wql_by_horizon": {r.name: r.wql_by_horizon for r in self.rungs},
            "by_demand_class": self.class_rows(),
            "hindsight": self.hindsight_rows(),
            "info": {r.name: r.info for r in self.rungs},
        }

    def save(self, out_dir: str | Path, plots: bool = True) -> list[Path]:
        """Write ``backtest.csv``, ``backtest_by_class.csv``, ``backtest.md``, ``backtest.json`` and the
        PNG plots; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "backtest.csv", out / "backtest.md", out / "backtest.json"]
        self.write_csv(paths[0])
        by_class = self.class_rows()
        if by_class:
            paths.append(out / "backtest_by_class.csv")
            _write_rows(paths[-1], by_class)
        paths[1].write_text(self.to_markdown() + "\n")
        paths[2].write_text(json.dumps(self.summary(), indent=2, default=_json_default) + "\n")
        if plots and self.rungs:
            paths += plot_backtest(self, out)
        return paths


def _write_rows(path: Path, rows: list[dict], empty_header: Sequence[str] = ()) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else list(empty_header))
        w.writeheader()
        w.writerows(rows)


def _markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    head = "| " + " | ".join(cols) + " |"
    # The first column names the row (a rung, a class) and aligns left; the figures align right.
    rule = "|---|" + "|".join("---:" for _ in cols[1:]) + "|"
    body = ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _unit(freq: str) -> str:
    return "h" if freq == "h" else "D"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _targets(history: History, origins: np.ndarray, horizons: int) -> np.ndarray:
    """Actuals [N, O, H] at the scored cells (observed target, item tracked at the origin), NaN elsewhere."""
    t = history.n_buckets
    cols = origins[:, None] + 1 + np.arange(horizons)[None, :]
    inside = cols < t
    cc = np.minimum(cols, t - 1)
    tracked = first_observed(history.observed)[:, None] <= origins[None, :]  # [N, O]
    ok = history.observed[:, cc] & inside[None] & tracked[:, :, None]
    return np.where(ok, history.qty[:, cc].astype(np.float64), np.nan)


def _validate(name: str, pred: np.ndarray, shape: tuple[int, ...], scored: np.ndarray) -> np.ndarray:
    """Shape, finiteness on scored cells, non-negative and non-crossing quantiles."""
    pred = np.asarray(pred, dtype=np.float32)
    if pred.shape != shape:
        raise ModelError(f"{name}: predict returned shape {pred.shape}, expected {shape}")
    if not np.all(np.isfinite(pred[scored])):
        raise ModelError(
            f"{name}: no forecast (NaN/inf) on {int((~np.isfinite(pred[scored])).sum())} scored cells"
        )
    fin = np.isfinite(pred)
    if np.any(pred[fin] < 0):
        raise ModelError(f"{name}: negative quantiles")
    if quantiles_cross(pred):
        raise ModelError(f"{name}: quantiles cross")
    return pred


def _check_no_leak(
    f: Forecaster, history: History, origins_checked: np.ndarray, all_origins: np.ndarray, pred: np.ndarray
) -> None:
    """Predict again from the history cut right after each checked origin; the answers must agree."""
    for o in origins_checked:
        alone = np.asarray(f.predict(history.head(int(o) + 1), np.array([o])), dtype=np.float32)[:, 0]
        batched = pred[:, int(np.searchsorted(all_origins, o))]
        same = np.isfinite(alone) == np.isfinite(batched)
        tol = 1e-4 * (1.0 + np.abs(np.nan_to_num(batched)))
        close = np.abs(np.nan_to_num(alone) - np.nan_to_num(batched)) <= tol
        if not (np.all(same) and np.all(close)):
            bad = int((~(same & close)).sum())
            raise LeakageError(
                f"{f.name}: the forecast at origin {int(o)} changes in {bad} cells when the buckets "
                "after it are removed: it reads data from after its origin"
            )


def run_backtest(
    history: History,
    forecasters: Sequence[Forecaster],
    cfg: BacktestConfig | None = None,
    progress: bool = True,
    source: str = "",
) -> BacktestResult:
    """Fit every forecaster before the first origin and score it at every origin (module docstring)."""
    import torch
    from tqdm import tqdm

    cfg = cfg or BacktestConfig()
    plan = make_plan(history, cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    all_o = plan.all_origins
    eval_idx = np.searchsorted(all_o, plan.origins)
    y_all = _targets(history, all_o, plan.horizons)  # [N, O_all, H]
    y = y_all[:, eval_idx]
    scored_all = np.isfinite(y_all)
    if not np.isfinite(y).any():
        raise ValueError("no observed targets after the evaluation origins: nothing to score")
    q = np.asarray(cfg.quantiles)
    shape = (history.n_items, all_o.size, plan.horizons, q.size)
    checked = {
        "first": plan.origins[:1],
        "all": plan.origins,
        "none": plan.origins[:0],
    }[cfg.leak_check]

    results: list[RungResult] = []
    bar = tqdm(forecasters, disable=not progress, desc="backtest", unit="rung")
    for f in bar:
        bar.set_postfix_str(f.name)
        if f.spec.horizons != plan.horizons or tuple(f.spec.quantiles) != tuple(cfg.quantiles):
            raise ValueError(
                f"{f.name} forecasts {f.spec.horizons} horizons at {f.spec.quantiles}; "
                f"the backtest needs {plan.horizons} at {cfg.quantiles}"
            )
        t0 = time.monotonic()
        f.fit(history.head(plan.until), plan.until)
        train_s = time.monotonic() - t0
        t0 = time.monotonic()
        raw = f.predict(history.head(int(all_o.max()) + 1), all_o)
        predict_s = time.monotonic() - t0
        pred = _validate(f.name, raw, shape, scored_all)
        _check_no_leak(f, history, checked, all_o, pred)
        results.append(_score(f, pred, y_all, eval_idx, plan, all_o, q, train_s, predict_s))
    return BacktestResult(
        config=cfg,
        plan=plan,
        freq=history.freq,
        item_ids=history.item_ids,
        bucket_start_ms=history.bucket_start_ms(),
        qty=history.qty,
        observed=history.observed,
        actuals=y,
        rungs=results,
        source=source,
        classes=demand_classes(history.qty[:, : plan.until], history.observed[:, : plan.until])[0],
    )


def _score(
    f: Forecaster,
    pred: np.ndarray,
    y_all: np.ndarray,
    eval_idx: np.ndarray,
    plan: Plan,
    all_o: np.ndarray,
    q: np.ndarray,
    train_s: float,
    predict_s: float,
) -> RungResult:
    """The metrics of one rung's forecasts at all origins ``pred`` [N, O_all, H, Q], scored as the
    service publishes them (:func:`model.metrics.as_published`)."""
    # A network's lowest quantile on a day an item sells nothing is often a few ten-thousandths of
    # a unit: published as 0.0, which covers the zero, but unrounded it would leave it outside the
    # interval. On the retail history that alone moved the P10-P90 coverage by up to 0.1 from one
    # training to the next (docs/backtest-log.md, 2026-11-27 evening).
    pred = as_published(pred)
    y = y_all[:, eval_idx]
    p = pred[:, eval_idx]
    per_q, mean = weighted_quantile_loss(y, p, q)
    by_h = [weighted_quantile_loss(y[:, :, h], p[:, :, h], q)[1] for h in range(plan.horizons)]
    cov = coverage(y, p[..., 0], p[..., -1])
    below, at_or_below = quantile_hits(y, p)
    vol = float("nan")
    pairs = [(i, int(np.searchsorted(all_o, o + 1))) for i, o in zip(eval_idx, plan.origins, strict=True)]
    pairs = [(i, j) for i, j in pairs if j < all_o.size and all_o[j] == all_o[i] + 1]
    if pairs and plan.horizons > 1:
        a = np.array([i for i, _ in pairs])
        b = np.array([j for _, j in pairs])
        first, second = pred[:, a], pred[:, b].copy()  # [N, P, H, Q]
        # Only scored buckets count; the target of (t, h+1) is the target of (t+1, h), so blanking the
        # companion's unscored cells drops those pairs.
        second[~np.isfinite(y_all[:, b])] = np.nan
        n, n_pairs = first.shape[:2]
        stacked = np.stack([first, second], axis=2).reshape(n * n_pairs, 2, plan.horizons, q.size)
        vol = volatility(stacked, y, median_index=int(np.argmin(np.abs(q - 0.5))))
    return RungResult(
        name=f.name,
        wql=float(mean),
        wql_per_quantile=[float(v) for v in per_q],
        wql_by_horizon=[float(v) for v in by_h],
        coverage=float(cov),
        volatility=float(vol),
        train_seconds=float(train_s),
        predict_seconds=float(predict_s),
        forecasts=p,
        info={k: v for k, v in (getattr(f, "info", None) or {}).items() if isinstance(v, int | float | str)},
        below=[float(v) for v in below],
        at_or_below=[float(v) for v in at_or_below],
    )


# --------------------------------------------------------------------------------------------------
# Plots


def plot_backtest(result: BacktestResult, out_dir: Path, n_items: int = 3) -> list[Path]:
    """wQL by rung, by horizon and by demand class, and forecast fans of a few items; returns the PNG
    paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = [r.name for r in result.rungs]
    lo_q, hi_q = result.quantiles[0], result.quantiles[-1]

    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 3.6))
    wql = [r.wql for r in result.rungs]
    bars = ax.bar(names, wql, color=plt.cm.viridis(np.linspace(0.15, 0.85, len(names))))
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    # The hindsight references as lines: where the rungs stand against knowing each item's demand
    # distribution (they are fitted on the scored actuals, so they are no bars of the ladder).
    for row, style in zip(result.hindsight_rows(), (":", "--"), strict=False):
        ax.axhline(
            float(row["wql"]), color="0.35", lw=1, ls=style, label=f"{row['reference']} {row['wql']:.3f}"
        )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")
    ax.set_ylabel("mean wQL (lower is better)")
    ax.set_title(f"Backtest: {result.plan.origins.size} origins, H={result.plan.horizons} ({result.freq})")
    fig.tight_layout()
    paths.append(out_dir / "wql_by_rung.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    h = np.arange(1, result.plan.horizons + 1)
    for r in result.rungs:
        ax.plot(h, r.wql_by_horizon, marker="o", ms=3, label=r.name)
    ax.set_xlabel("horizon (buckets ahead)")
    ax.set_ylabel("mean wQL")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "wql_by_horizon.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    by_class = result.class_rows()
    if by_class:
        fig, ax = plt.subplots(figsize=(1.6 * len(by_class) + 3, 3.8))
        x = np.arange(len(by_class))
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            ax.bar(
                x + (k - (len(names) - 1) / 2) * width,
                [row[f"wql_{name}"] for row in by_class],
                width,
                label=name,
            )
        ax.set_xticks(
            x, [f"{row['class']}\n{row['volume_share']:.0%} of demand" for row in by_class], fontsize=8
        )
        ax.set_ylabel("mean wQL (lower is better)")
        ax.set_title("wQL by demand class (ADI / CV² of the training buckets)", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / "wql_by_class.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    items = _fan_items(result, n_items)
    if items.size:
        dates = result.bucket_start_ms.astype("datetime64[ms]")
        origins = result.plan.origins
        start = max(0, int(origins[0]) - 2 * result.plan.horizons)
        end = min(result.bucket_start_ms.size, int(origins[-1]) + result.plan.horizons + 1)
        fig, axes = plt.subplots(
            items.size, len(names), figsize=(3.2 * len(names), 2.2 * items.size), squeeze=False, sharex=True
        )
        cols = origins[:, None] + 1 + np.arange(result.plan.horizons)[None, :]
        cols_c = np.minimum(cols, result.bucket_start_ms.size - 1)
        for row, i in enumerate(items):
            actual = np.where(result.observed[i, start:end], result.qty[i, start:end], np.nan)
            for c, r in enumerate(result.rungs):
                ax = axes[row, c]
                ax.plot(dates[start:end], actual, color="black", lw=0.8)
                for k in range(origins.size):
                    x = dates[cols_c[k]]
                    ax.fill_between(
                        x, r.forecasts[i, k, :, 0], r.forecasts[i, k, :, -1], alpha=0.25, color="C0"
                    )
                    ax.plot(x, r.forecasts[i, k, :, len(result.quantiles) // 2], color="C0", lw=0.8)
                if row == 0:
                    ax.set_title(r.name, fontsize=9)
                if c == 0:
                    ax.set_ylabel(str(result.item_ids[i]), fontsize=8)
                ax.tick_params(labelsize=6)
                for label in ax.get_xticklabels():
                    label.set_rotation(30)
        fig.suptitle(
            f"actuals (black), P50 and P{round(lo_q * 100)}-P{round(hi_q * 100)} at each origin", fontsize=9
        )
        fig.tight_layout()
        paths.append(out_dir / "fans.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def _fan_items(result: BacktestResult, n: int) -> np.ndarray:
    """A high-, a middle- and a low-volume item among those with scored cells (deterministic)."""
    volume = np.nansum(np.abs(result.actuals), axis=(1, 2))
    has = np.isfinite(result.actuals).any(axis=(1, 2)) & (volume > 0)
    ranked = np.flatnonzero(has)[np.argsort(-volume[has], kind="stable")]
    if ranked.size == 0:
        return ranked
    picks = np.unique(np.round(np.array([0.0, 0.1, 0.5, 0.8, 0.95])[:n] * (ranked.size - 1)).astype(int))
    return ranked[picks]
