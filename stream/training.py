"""``mqcast train``: fit the network on a history file and export a servable artefact.

This is where the model and the state meet: the trainer (``model/``) receives the serving ledger's
feedback recurrence (``state/``) as a function, so the features it trains on are the ones the
service will compute.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.history import History, dates_to_buckets, read_history
from state.feedback import feedback_feature_names, replay_feedback
from stream.errors import MqcastError

if TYPE_CHECKING:
    from model.network import ModelArgs

log = logging.getLogger("mqcast.train")


def feedback_names(args: ModelArgs) -> list[str]:
    """The names of a model's feedback input columns, as its artefact's metadata lists them and
    the service checks them (``stream.service.check_model_fits``)."""
    previous = args.horizons if args.feedback_previous else 0
    return list(feedback_feature_names(args.quantiles, args.feedback_window, previous))


def cut_history(history: History, until: str | None) -> History:
    """Keep the buckets strictly before ``until`` (an ISO date), for an honest hold-out."""
    if until is None:
        return history
    try:
        limit = int(dates_to_buckets(np.array([until]), history.freq)[0])
    except ValueError as exc:
        raise MqcastError(f"--until {until!r} is not an ISO date") from exc
    keep = limit - history.first_bucket
    if keep < 2:
        raise MqcastError(f"--until {until} leaves no training data (the history starts later)")
    return history.head(min(keep, history.n_buckets))


def train_artifact(
    history: History,
    out: Path,
    *,
    context_length: int | None = None,
    horizons: int | None = None,
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9),
    epochs: int | None = None,
    max_minutes: float | None = None,
    feedback_stages: int | None = None,
    feedback_window: int | None = None,
    feedback_previous: bool | None = None,
    recent: int | None = None,
    ema_decay: float | None = None,
    ensemble: int | None = None,
    window_member: int | None = None,
    seed: int = 0,
    calibrate: bool = True,
    threads: int | None = None,
    device: str = "auto",
    progress: bool = True,
    source: str = "",
) -> dict:
    """Train on ``history`` and write the TorchScript artefact to ``out``; returns its metadata."""
    import torch

    from model.export import export_model
    from model.network import default_args_for
    from model.prune import served_form
    from model.train import TrainConfig, feedback_for, train

    args = default_args_for(history.freq)
    overrides: dict[str, object] = {"quantiles": tuple(quantiles), "n_static": len(history.static)}
    if context_length is not None:
        overrides["context_length"] = context_length
    if horizons is not None:
        overrides["horizons"] = horizons
    if feedback_window is not None:
        overrides["feedback_window"] = feedback_window
    if feedback_previous is not None:
        overrides["feedback_previous"] = feedback_previous
    if recent is not None:
        overrides["recent"] = recent
    if ensemble is not None:
        overrides["ensemble"] = ensemble
    if window_member is not None:
        overrides["window_member"] = window_member
    args = dataclasses.replace(args, **overrides)

    cfg = TrainConfig()
    changes: dict[str, object] = {"seed": seed, "calibrate": calibrate}
    if epochs is not None:
        changes["epochs"] = epochs
    if max_minutes is not None:
        changes["max_minutes"] = max_minutes
    if feedback_stages is not None:
        changes["feedback_stages"] = feedback_stages
    if threads is not None:
        changes["threads"] = threads
    if ema_decay is not None:
        changes["ema_decay"] = ema_decay
    changes["device"] = (
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    cfg = dataclasses.replace(cfg, **changes)

    model, report = train(
        history, args, cfg, feedback_fn=feedback_for(replay_feedback, args), progress=progress
    )
    # Served without the calendar columns training taught it to ignore (model/prune.py).
    model, args, past, future = served_form(model, args)
    meta = {
        "freq": history.freq,
        "quantiles": list(args.quantiles),
        "horizons": args.horizons,
        "context_length": args.context_length,
        "features": {"past": past, "future": future, "feedback": feedback_names(args)},
        "static_columns": list(history.static),
        "train_data": {
            "source": source,
            "items": history.n_items,
            "buckets": history.n_buckets,
            "first_bucket_start_ms": int(history.bucket_start_ms()[0]),
            "last_bucket_start_ms": int(history.bucket_start_ms()[-1]),
        },
        "report": report,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    return export_model(model, args, out, meta)


def run_train(args: argparse.Namespace) -> int:
    """The ``mqcast train`` command."""
    history = read_history(args.data, None if args.bucket == "auto" else args.bucket)
    history = cut_history(history, args.until)
    log.info(
        "training on %s: %d items x %d %s-buckets",
        args.data,
        history.n_items,
        history.n_buckets,
        history.freq,
    )
    meta = train_artifact(
        history,
        args.out,
        context_length=args.context_length,
        horizons=args.horizons,
        quantiles=args.quantiles,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        feedback_stages=args.feedback_stages,
        feedback_window=args.feedback_window,
        feedback_previous=args.feedback_previous,
        recent=args.recent,
        ema_decay=args.ema_decay,
        ensemble=args.ensemble,
        window_member=args.window_member,
        seed=args.seed,
        calibrate=args.calibrate,
        threads=args.threads,
        device=args.device,
        progress=not args.no_progress,
        source=str(args.data),
    )
    print(f"wrote {args.out} (model {meta.get('version')})")
    report = meta.get("report", {})
    if "val_wql" in report:
        print(
            f"validation (the last {report.get('validation_buckets')} buckets): wQL {report['val_wql']:.4f}, "
            f"outer-interval coverage {report['val_coverage']:.3f}"
        )
    window = report.get("window_member") or {}
    if window:
        print(
            f"feed-forward window member: {int(window['steps'])} steps in {window['seconds']:.0f} s, "
            f"its own held-out wQL {window['val_wql']:.4f}"
        )
    calibration = report.get("calibration") or {}
    if calibration:
        print(
            f"calibration: quantile shifts {calibration['shifts']} (item-scale units); validation wQL "
            f"{calibration['val_wql_before']:.4f} -> {calibration['val_wql_after']:.4f}, coverage "
            f"{calibration['val_coverage_before']:.3f} -> {calibration['val_coverage_after']:.3f}"
        )
    gap = report.get("feedback_error_gap") or {}
    if gap:
        print(
            f"feedback features were built from forecasts with wQL {gap['in_sample_wql']:.4f} on fitted "
            f"targets and {gap['held_out_wql']:.4f} on held-out ones"
        )
    return 0
