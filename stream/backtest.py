"""``mqcast backtest``: its options and the command, without importing torch until it runs.

The command line builds every subcommand's parser at start, so this module imports nothing heavy;
the backtest itself (``model.backtest``, ``model.baselines``, torch) loads when the command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from model.errors import ModelError
from stream.config import decay_rate, non_negative_int, positive_float, positive_int, quantile_list

if TYPE_CHECKING:
    from model.baselines import FeedbackReplay

#: The ladder, lowest rung first: the keys of ``model.baselines.RUNGS`` (a test keeps them equal).
LADDER = ("naive", "ets", "qrf", "ffn", "mqcnn", "mqcnn-feedback")

#: Each trained rung's fit budget by default: ``mqcast train``'s (``TrainConfig.max_minutes``; a
#: test keeps them equal), so the backtest scores the model that ``train`` would ship.
DEFAULT_MINUTES_PER_RUNG = 4.0


def add_backtest_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mqcast backtest``."""
    parser.add_argument("--data", type=Path, required=True, help="history file (item_id,date,qty[,...])")
    parser.add_argument("--out-dir", type=Path, default=Path("backtest"), help="where tables and plots go")
    parser.add_argument(
        "--rungs",
        default=",".join(LADDER),
        help=f"comma-separated rungs to compare, from: {', '.join(LADDER)} (default: all)",
    )
    parser.add_argument("--origins", type=positive_int, default=8, help="evaluation origins (default 8)")
    parser.add_argument(
        "--spacing",
        type=positive_int,
        default=None,
        help="buckets between origins (default: D 14, W 4, M 3, h 24)",
    )
    parser.add_argument(
        "--horizons",
        type=positive_int,
        default=None,
        help="buckets forecast (default: D 14, W 8, M 6, h 24)",
    )
    parser.add_argument(
        "--max-minutes-per-rung",
        type=positive_float,
        default=DEFAULT_MINUTES_PER_RUNG,
        help=f"fit budget of each trained network, in minutes (default {DEFAULT_MINUTES_PER_RUNG:g}, "
        "as mqcast train)",
    )
    parser.add_argument(
        "--bucket",
        choices=("auto", "h", "D", "W", "M"),
        default="auto",
        help="bucket unit (default: inferred)",
    )
    parser.add_argument("--quantiles", type=quantile_list, default=(0.1, 0.5, 0.9), help="e.g. 0.1,0.5,0.9")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: all cores, as mqcast train); an ensemble's networks train "
        "this many at a time, one thread each; give 1 to run two backtests side by side",
    )
    parser.add_argument(
        "--leak-check",
        choices=("first", "all", "none"),
        default="first",
        help="origins re-forecast from a truncated history to prove no look-ahead (default: first)",
    )
    parser.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after training the MQ-CNN rungs, shift every quantile but the median to fit held-out "
        "targets (default: on)",
    )
    parser.add_argument(
        "--feedback-window",
        type=non_negative_int,
        default=None,
        help="scored buckets the mqcnn-feedback rung attends over (default 0: the error averages only)",
    )
    parser.add_argument(
        "--recent",
        type=non_negative_int,
        default=None,
        help="latest buckets the MQ-CNN rungs' decoder reads directly (default: the model's for the "
        "data's bucket)",
    )
    parser.add_argument(
        "--ema-decay",
        type=decay_rate,
        default=None,
        help="the trained rungs (ffn and the MQ-CNNs) keep a moving average of their weights with "
        "this decay per step (default 0.998 for the MQ-CNNs, 0.999 for ffn; 0 keeps the raw weights)",
    )
    parser.add_argument(
        "--ensemble",
        type=positive_int,
        default=None,
        help="the ffn and MQ-CNN rungs train this many networks from consecutive seeds and forecast "
        "the mean of their quantiles, each with the whole fit budget (default: 2 for weekly data, "
        "else 1)",
    )
    parser.add_argument(
        "--window-member",
        type=non_negative_int,
        default=None,
        help="the MQ-CNN rungs average one more member into their ensemble: a feed-forward net over "
        "the window (the ffn rung's) with hidden layers this wide (0: none; default: the model's for "
        "the data's bucket)",
    )
    parser.add_argument(
        "--feedback-previous",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the mqcnn-feedback rung's decoder also reads, per horizon, what its previous origin "
        "forecast for the same target (default: the model's)",
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_backtest_command(args: argparse.Namespace, feedback_replay: FeedbackReplay | None = None) -> int:
    """``mqcast backtest``: returns the exit status (2 on bad arguments or data).

    ``feedback_replay`` is ``state.feedback.feedback_steps``; the ``mqcnn-feedback`` rung needs it.
    """
    from model.backtest import BacktestConfig, build_forecasters, make_plan, run_backtest
    from model.baselines import RUNGS
    from model.history import read_history

    names = [n.strip() for n in str(args.rungs).split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNGS]
    if unknown or not names:
        print(
            f"mqcast backtest: unknown rung(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(RUNGS)}",
            file=sys.stderr,
        )
        return 2
    try:
        history = read_history(args.data, None if args.bucket == "auto" else args.bucket)
        cfg = BacktestConfig(
            quantiles=tuple(args.quantiles),
            horizons=args.horizons,
            n_origins=args.origins,
            spacing=args.spacing,
            seed=args.seed,
            max_seconds_per_rung=60.0 * args.max_minutes_per_rung,
            calibrate=args.calibrate,
            feedback_window=args.feedback_window,
            recent=args.recent,
            ema_decay=args.ema_decay,
            ensemble=args.ensemble,
            window_member=args.window_member,
            feedback_previous=args.feedback_previous,
            leak_check=args.leak_check,
            threads=args.threads,
        )
        forecasters = build_forecasters(names, history, cfg, feedback_replay)
        plan = make_plan(history, cfg)
    except (ValueError, ModelError) as exc:
        print(f"mqcast backtest: {exc}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    print(
        f"backtest {args.data}: {history.n_items} items x {history.n_buckets} {history.freq}-buckets, "
        f"train on {plan.until}, {plan.origins.size} origins, H={plan.horizons}",
        file=sys.stderr,
    )
    t0 = time.monotonic()
    result = run_backtest(history, forecasters, cfg, progress=progress, source=str(args.data))
    paths = result.save(args.out_dir, plots=not args.no_plots)
    print(result.to_markdown())
    print(f"\n{result.scored_cells} scored cells; {time.monotonic() - t0:.0f} s", file=sys.stderr)
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return 0
