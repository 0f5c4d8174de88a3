"""``mqcast demo``: the whole product on one machine, on the bundled Online Retail data.

1. start a local Apache Kafka broker (unless ``--bootstrap`` names one) and create the topics;
2. train the model on the daily history before ``--train-until`` (or reuse the cached artefact);
3. replay every invoice line as a sales event, from a separate process;
4. run the forecasting service on them with a live progress line and Prometheus metrics;
5. print a summary (throughput, realised accuracy before and after the training cut) and draw the
   forecast fans of a few items against what they really sold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from state.buckets import bucket_of
from state.ledger import RealisedScore
from state.partition import ClosedBucket
from stream.config import PRECISION_NAMES, add_env_argument, port_number, positive_int
from stream.observer import ServiceObserver

log = logging.getLogger("mqcast.demo")

#: Lines in the bundled events file (SOURCE.md), for the progress bar before the replay reports.
_BUNDLED_EVENTS = 541_909


def bundled_data_dir() -> Path:
    """The Online Retail files shipped with the project (``MQCAST_DATA_DIR`` overrides)."""
    env = os.environ.get("MQCAST_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "data" / "online_retail_uci"


def cache_dir() -> Path:
    """Where downloads and trained demo models are kept between runs (``MQCAST_CACHE``)."""
    return Path(os.environ.get("MQCAST_CACHE", Path.home() / ".cache" / "mqcast"))


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``mqcast demo``; every one has a default that runs as it is."""
    add_env_argument(
        p, "--bootstrap", "BOOTSTRAP", default=None, help="use this Kafka instead of starting a local broker"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with daily.csv.gz and events.csv.gz (default: the bundled Online Retail data)",
    )
    p.add_argument(
        "--train-until",
        default="2011-09-01",
        help="train on days before this date; later forecasts are out of sample (default: 2011-09-01)",
    )
    p.add_argument("--train-minutes", type=float, default=4.0, help="training time budget (default: 4)")
    p.add_argument("--retrain", action="store_true", help="train even if a cached model fits")
    p.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="replay speed-up over event time (default: 0 = as fast as possible)",
    )
    p.add_argument(
        "--partitions", type=positive_int, default=4, help="partitions of the sales topic (default: 4)"
    )
    p.add_argument(
        "--max-batch", type=positive_int, default=1024, help="item forecasts per model call (default: 1024)"
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="model device (default: auto)"
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_NAMES,
        default="fp32",
        help="what the model's layers compute in (default: fp32)",
    )
    add_env_argument(
        p,
        "--metrics-port",
        "METRICS_PORT",
        type=port_number,
        default=9464,
        help="Prometheus port (0 disables)",
    )
    p.add_argument(
        "--out-dir", type=Path, default=Path("runs/demo"), help="summary and plot (default: runs/demo)"
    )
    p.add_argument("--plot-items", type=positive_int, default=4, help="items drawn in the plot (default: 4)")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")


@dataclass
class _Accuracy:
    pinball: np.ndarray
    abs_actual: float = 0.0
    hits: int = 0
    scored: int = 0

    def add(self, s: RealisedScore) -> None:
        self.pinball += s.pinball_sum
        self.abs_actual += s.abs_actual_sum
        self.hits += s.interval_hits
        self.scored += s.n_scored

    def summary(self, quantiles: tuple[float, ...]) -> dict:
        if self.scored == 0 or self.abs_actual <= 0:
            return {"scored": 0}
        wql = 2.0 * self.pinball / self.abs_actual
        return {
            "scored": self.scored,
            "wql_mean": float(wql.mean()),
            "wql_per_quantile": {f"{q:g}": float(v) for q, v in zip(quantiles, wql, strict=True)},
            "mean_pinball": float(self.pinball.mean() / self.scored),
            "interval_coverage": self.hits / self.scored,
        }


@dataclass
class DemoObserver(ServiceObserver):
    """Collects accuracy before/after the training cut and the forecasts of the plotted items."""

    cut_bucket: int
    plot_items: set[str]
    quantiles: tuple[float, ...]
    in_sample: _Accuracy = field(init=False)
    out_of_sample: _Accuracy = field(init=False)
    forecasts: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.in_sample = _Accuracy(np.zeros(len(self.quantiles)))
        self.out_of_sample = _Accuracy(np.zeros(len(self.quantiles)))

    def on_close(self, partition: int, closed: ClosedBucket) -> None:
        # A bucket's forecasts were all made after the bucket before it, so a target at or after
        # the cut was never seen by the trainer.
        (self.out_of_sample if closed.bucket >= self.cut_bucket else self.in_sample).add(closed.score)

    def on_forecasts(self, partition: int, closed: ClosedBucket, values: np.ndarray) -> None:
        if not self.plot_items:
            return
        for i, item in enumerate(closed.item_ids):
            if item in self.plot_items:
                self.forecasts.setdefault(item, []).append((closed.bucket, values[i].copy()))


def _model_for_demo(args: argparse.Namespace, daily: Path) -> Path:
    from model.history import read_history
    from stream.training import cut_history, train_artifact

    # The cached model is reused only for the same data, settings and model code.
    h = hashlib.sha256(daily.read_bytes())
    h.update(f"{args.train_until}|{args.train_minutes}".encode())
    root = Path(__file__).resolve().parents[1]
    for src in [*sorted((root / "model").glob("*.py")), root / "state" / "feedback.py"]:
        h.update(src.read_bytes())
    key = h.hexdigest()[:12]
    path = cache_dir() / "models" / f"demo-{key}.pt"
    if path.exists() and not args.retrain:
        log.info("reusing the trained model %s (--retrain to train again)", path)
        return path
    history = cut_history(read_history(daily), args.train_until)
    log.info(
        "training on %d items x %d days before %s (budget %.1f min)",
        history.n_items,
        history.n_buckets,
        args.train_until,
        args.train_minutes,
    )
    tmp = path.with_suffix(".tmp")
    train_artifact(
        history,
        tmp,
        max_minutes=args.train_minutes,
        device=args.device,
        progress=not args.no_progress,
        source=str(daily),
    )
    tmp.replace(path)
    return path


def _pick_plot_items(daily: Path, k: int) -> list[str]:
    from model.history import read_history

    h = read_history(daily)
    days_sold = (h.qty > 0).sum(axis=1)
    return [str(x) for x in h.item_ids[np.argsort(-days_sold, kind="stable")[:k]]]


def run_demo(args: argparse.Namespace) -> int:
    """The ``mqcast demo`` command."""
    data = args.data_dir or bundled_data_dir()
    daily, events = data / "daily.csv.gz", data / "events.csv.gz"
    for f in (daily, events):
        if not f.exists():
            from stream.errors import MqcastError

            raise MqcastError(f"{f} is missing (the bundled data lives in data/online_retail_uci)")
    args.out_dir.mkdir(parents=True, exist_ok=True)

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from stream.broker import BrokerConfig, LocalBroker

        broker = LocalBroker(BrokerConfig())
        print("starting a local Apache Kafka broker ...", flush=True)
        bootstrap = broker.start()
    try:
        return _run(args, bootstrap, daily, events)
    finally:
        if broker is not None:
            broker.stop()


def _run(args: argparse.Namespace, bootstrap: str, daily: Path, events: Path) -> int:
    from prometheus_client import CollectorRegistry
    from tqdm import tqdm

    from stream.batcher import BatcherConfig
    from stream.config import KafkaConfig, MetricsConfig, ModelServeConfig, ServiceConfig
    from stream.health import Health, serve_http
    from stream.inference import Predictor
    from stream.service import ForecastService
    from stream.topics import ensure_topics, service_topics

    run_id = time.strftime("%Y%m%d%H%M%S")
    suffix = "" if args.bootstrap is None else f".demo-{run_id}"
    kafka = KafkaConfig(
        bootstrap=bootstrap,
        sales_topic=f"sales{suffix}",
        forecast_topic=f"forecasts{suffix}",
        dead_letter_topic=f"sales.dlq{suffix}",
        group_id=f"mqcast-demo-{run_id}",
    )
    ensure_topics(
        bootstrap,
        service_topics(kafka.sales_topic, kafka.forecast_topic, kafka.dead_letter_topic, args.partitions),
    )
    model_path = _model_for_demo(args, daily)
    cfg = ServiceConfig(
        kafka=kafka,
        model=ModelServeConfig(path=model_path, device=args.device, bucket="D", precision=args.precision),
        batcher=BatcherConfig(max_batch=args.max_batch),
        metrics=MetricsConfig(port=args.metrics_port),
    )
    predictor = Predictor.load(model_path, args.device, args.precision)
    quantiles = tuple(float(q) for q in predictor.meta["quantiles"])
    cut = int(bucket_of(np.array([np.datetime64(args.train_until, "ms").astype(np.int64)]), "D")[0])
    plot_items = _pick_plot_items(daily, args.plot_items)
    observer = DemoObserver(cut, set(plot_items), quantiles)
    registry = CollectorRegistry()
    health = Health()
    if args.metrics_port:
        serve_http(registry, health, "127.0.0.1", args.metrics_port)
        print(
            f"metrics: http://127.0.0.1:{args.metrics_port}/metrics (health: /healthz, /readyz)", flush=True
        )
    service = ForecastService(cfg, predictor, registry, observer=observer, health=health)

    replay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "replay",
            str(events),
            "--bootstrap",
            bootstrap,
            "--sales-topic",
            kafka.sales_topic,
            "--speed",
            str(args.speed),
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    print(
        f"replaying {events.name} to '{kafka.sales_topic}' and forecasting with model {predictor.version} "
        f"on {predictor.device} ({predictor.precision})",
        flush=True,
    )
    t0 = time.monotonic()
    idle_since: float | None = None
    bar = tqdm(total=_BUNDLED_EVENTS, unit="ev", disable=args.no_progress, desc="events", smoothing=0.1)
    try:
        while True:
            n = service.poll_once()
            bar.update(n)
            wql = service.metrics.rolling_wql()
            bar.set_postfix_str(
                f"forecasts {service.stats.forecasts:,} days {service.stats.buckets_closed} "
                f"dead {service.stats.invalid + service.stats.late:,}"
                + (f" wQL {wql:.3f}" if wql is not None else ""),
                refresh=False,
            )
            if n:
                idle_since = None
                continue
            if replay.poll() is None:
                continue
            idle_since = idle_since or time.monotonic()
            # Everything the replay sent has been read once the group's position meets the log end.
            if time.monotonic() - idle_since > 3.0:
                break
    finally:
        bar.close()
        service.close()
        if replay.poll() is None:
            replay.terminate()
        replay.wait(timeout=30)
    elapsed = time.monotonic() - t0
    if replay.returncode != 0:
        print(f"replay failed:\n{replay.stderr.read() if replay.stderr else ''}", file=sys.stderr)
        return 1

    stats = service.stats
    summary = {
        "model": predictor.version,
        "device": str(predictor.device),
        "precision": predictor.precision,
        "train_until": args.train_until,
        "events": stats.events,
        "dead_letters": stats.invalid + stats.late,
        "invalid": stats.invalid,
        "late": stats.late,
        "days_closed": stats.buckets_closed,
        "forecasts": stats.forecasts,
        "seconds": round(elapsed, 1),
        "events_per_second": round(stats.events / elapsed, 1),
        "forecasts_per_second": round(stats.forecasts / elapsed, 1),
        "accuracy_in_sample": observer.in_sample.summary(quantiles),
        "accuracy_out_of_sample": observer.out_of_sample.summary(quantiles),
    }
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    png = args.out_dir / "forecast_fans.png"
    from stream.plots import plot_forecast_fans

    plot_forecast_fans(daily, observer.forecasts, plot_items, quantiles, png)
    _print_summary(summary, png)
    return 0


def _print_summary(s: dict, png: Path) -> None:
    oos = s["accuracy_out_of_sample"]
    ins = s["accuracy_in_sample"]
    print()
    print(f"events read        {s['events']:>12,}  ({s['events_per_second']:,.0f}/s over {s['seconds']} s)")
    print(f"dead-lettered      {s['dead_letters']:>12,}  (invalid {s['invalid']:,}, late {s['late']:,})")
    print(f"days closed        {s['days_closed']:>12,}")
    print(f"forecasts          {s['forecasts']:>12,}  ({s['forecasts_per_second']:,.0f}/s)")
    for name, acc in (("in sample", ins), (f"out of sample (from {s['train_until']})", oos)):
        if acc.get("scored"):
            print(
                f"{name}: wQL {acc['wql_mean']:.3f}, mean pinball {acc['mean_pinball']:.3f}, "
                f"P10-P90 coverage {acc['interval_coverage']:.3f} over {acc['scored']:,} realised forecasts"
            )
    print(f"plot: {png}")
    print(f"summary: {png.parent / 'summary.json'}")
