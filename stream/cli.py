"""The ``mqcast`` command line: one entry point, one subcommand per job.

Heavy imports (torch, kafka) happen inside the subcommands so ``mqcast --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from stream.config import (
    add_env_argument,
    add_kafka_arguments,
    add_service_arguments,
    check_env_choices,
    decay_rate,
    non_negative_int,
    positive_int,
    quantile_list,
)
from stream.errors import MqcastError


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if value < 0:
        raise argparse.ArgumentTypeError("speed must be >= 0 (0 = as fast as possible)")
    return value


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT / SIGTERM, so the service finishes its batch and commits before exiting."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


# -- subcommands -----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from model.errors import ModelError
    from stream.config import service_config_from_args
    from stream.health import Health, serve_http
    from stream.inference import Predictor
    from stream.reload import resolve_model_path
    from stream.service import ForecastService

    if args.model is None:
        raise MqcastError("serve needs a model: --model PATH or MQCAST_MODEL (train one with `mqcast train`)")
    try:
        cfg = service_config_from_args(args)
    except ValueError as exc:
        raise MqcastError(str(exc)) from exc
    from torch import get_num_threads as torch_threads
    from torch import set_num_threads

    if cfg.model.torch_threads:
        set_num_threads(cfg.model.torch_threads)
    try:
        predictor = Predictor.load(
            resolve_model_path(cfg.model.path), cfg.model.device, cfg.model.precision, cfg.model.workers
        )
    except (ModelError, RuntimeError) as exc:  # a missing or foreign artefact; cuda asked for, absent
        raise MqcastError(str(exc)) from exc
    registry = CollectorRegistry()
    health = Health(stall_after_s=cfg.metrics.stall_after_s)
    # Probes answer (not ready) while the service connects and restores, so start the endpoint first.
    if cfg.metrics.port:
        serve_http(registry, health, cfg.metrics.host, cfg.metrics.port)
        logging.info(
            "metrics and health on http://%s:%d/metrics, /healthz, /readyz",
            cfg.metrics.host,
            cfg.metrics.port,
        )
    service = ForecastService(cfg, predictor, registry, health=health)
    logging.info(
        "serving model %s on %s (%s, %d torch threads, %d model workers): %s -> %s",
        predictor.version,
        predictor.device,
        predictor.precision,
        torch_threads(),
        predictor.workers,
        cfg.kafka.sales_topic,
        cfg.kafka.forecast_topic,
    )
    stats = service.run(_stop_on_signals())
    logging.info("stopped: %s", stats)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from kafka import KafkaProducer

    from stream.replay import load_events, replay, send_attributes

    events = load_events(args.file)
    if args.limit:
        events = events.slice(0, args.limit)
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1)
    stop = _stop_on_signals()
    try:
        if events.attributes and args.items_topic:
            # First, so that a service started now knows every item's store, category, ...
            n = send_attributes(producer, args.items_topic, events.attributes)
            print(f"sent the attributes of {n} items to {args.items_topic}")
        sent = replay(
            events,
            producer,
            args.sales_topic,
            speed=args.speed,
            progress=not args.no_progress,
            stop=stop.is_set,
        )
    finally:
        producer.close(timeout=10)
    print(f"replayed {sent} events from {args.file} to {args.sales_topic}")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from stream.topics import ensure_topics, service_topics, setting_drift

    specs = service_topics(
        args.sales_topic,
        args.forecast_topic,
        args.dead_letter_topic,
        args.partitions,
        args.items_topic or None,
    )
    created = ensure_topics(args.bootstrap, specs)
    print("created: " + (", ".join(created) if created else "nothing (all topics exist)"))
    for drift in setting_drift(args.bootstrap, specs):
        print("note: " + drift.advice(args.bootstrap))
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from stream.broker import run_broker_command

    return run_broker_command(args)


def cmd_train(args: argparse.Namespace) -> int:
    from stream.training import run_train

    return run_train(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    return run_demo(args)


# -- parser ----------------------------------------------------------------------------------------


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``mqcast train`` (the demo trains with the same ones)."""
    p.add_argument(
        "--bucket",
        choices=("auto", "h", "D", "W", "M"),
        default="auto",
        help="bucket unit of the history (default: inferred from the dates)",
    )
    p.add_argument(
        "--until", default=None, help="train only on buckets before this date (keeps the rest for evaluation)"
    )
    p.add_argument(
        "--context-length",
        type=positive_int,
        default=None,
        help="buckets of history the model sees (default: per bucket unit, 56 for days)",
    )
    p.add_argument(
        "--horizons",
        type=positive_int,
        default=None,
        help="buckets ahead to forecast (default: per bucket unit, 14 for days)",
    )
    p.add_argument(
        "--quantiles",
        type=quantile_list,
        default=(0.1, 0.5, 0.9),
        help="quantile levels (default: 0.1,0.5,0.9)",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=None, help="passes over the items (default: model's)"
    )
    p.add_argument("--max-minutes", type=float, default=None, help="time budget for training")
    p.add_argument(
        "--feedback-stages", type=int, default=None, help="feedback training rounds (0 disables feedback)"
    )
    p.add_argument(
        "--feedback-window",
        type=non_negative_int,
        default=None,
        help="scored buckets the decoder attends over (default 0: the error averages only)",
    )
    p.add_argument(
        "--feedback-previous",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each horizon's decoder also reads what the item's previous origin forecast for the same "
        "target, served from the ledger (default: the model's for the data's bucket)",
    )
    p.add_argument(
        "--recent",
        type=non_negative_int,
        default=None,
        help="latest buckets the decoder reads directly, besides the encoding (default: the model's for "
        "the data's bucket)",
    )
    p.add_argument(
        "--ema-decay",
        type=decay_rate,
        default=None,
        help="keep a moving average of the weights with this decay per optimiser step and serve it "
        "(default 0.998; 0 keeps the raw weights)",
    )
    p.add_argument(
        "--ensemble",
        type=positive_int,
        default=None,
        help="train this many networks from consecutive seeds and serve the mean of their quantiles "
        "(default: 2 for weekly data, else 1; each one takes the whole --max-minutes and a forward "
        "per forecast)",
    )
    p.add_argument(
        "--window-member",
        type=non_negative_int,
        default=None,
        help="average one more member into the ensemble: a feed-forward net over the window with "
        "hidden layers this wide, trained first by the backtest's ffn recipe within --max-minutes "
        "(0: none; default: the model's for the data's bucket)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after training, shift every quantile but the median to fit the validation targets "
        "(default: on)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: all cores); an ensemble's MQ-CNNs train this many at a time, "
        "one thread each",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")


def cmd_backtest(args: argparse.Namespace) -> int:
    """``mqcast backtest``: the ladder table, CSV/Markdown/JSON and plots."""
    from state.feedback import feedback_steps
    from stream.backtest import run_backtest_command

    return run_backtest_command(args, feedback_replay=feedback_steps)


def build_parser() -> argparse.ArgumentParser:
    """The full ``mqcast`` parser."""
    parser = argparse.ArgumentParser(
        prog="mqcast", description="Streaming multi-horizon quantile demand forecaster on Kafka."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="local broker + bundled retail data replayed + live forecasts + metrics",
        description="Run the whole product on this machine: start a local Kafka broker, train "
        "(or reuse) a model on the bundled Online Retail history, replay its invoice lines as "
        "sales events, forecast every closed day, and finish with a summary and a plot.",
    )
    from stream.demo import add_demo_arguments

    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "serve",
        help="run the forecasting consumer service",
        description="Consume sales events, keep per-item state, forecast closed buckets in "
        "micro-batches, publish forecasts, and export Prometheus metrics.",
    )
    add_service_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "train",
        help="train a model on a history file and export it",
        description="Train the MQ-CNN forecaster with forking sequences and feedback features "
        "on a history file (item_id,date,qty[,price][,static...], optionally gzipped) and "
        "export a TorchScript artefact with its metadata.",
    )
    p.add_argument("--data", type=Path, required=True, help="history file")
    p.add_argument("--out", type=Path, required=True, help="where to write the TorchScript artefact")
    add_train_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "backtest",
        help="rolling-origin backtest of the forecasting ladder on a history file",
        description="Fit each rung (seasonal naive, exponential smoothing, quantile random forest, "
        "feed-forward net, MQ-CNN, MQ-CNN with feedback) before the first origin and score it at "
        "rolling origins on the same cells: wQL per quantile, outer-interval coverage, volatility, "
        "fit and predict time, and wQL per demand class (smooth, erratic, intermittent, lumpy). "
        "Writes backtest.csv/.md/.json, backtest_by_class.csv and PNG plots to --out-dir.",
    )
    from stream.backtest import add_backtest_arguments

    add_backtest_arguments(p)
    p.set_defaults(func=cmd_backtest)

    p = sub.add_parser(
        "replay",
        help="send a history or events file to the sales topic",
        description="Replay a history file, an events file or the Online Retail invoice lines "
        "as sales events, in event-time order.",
    )
    p.add_argument("file", type=Path, help="history / events file (.csv or .csv.gz)")
    add_kafka_arguments(p)
    p.add_argument(
        "--speed",
        type=_speed,
        default=0.0,
        help="event-time speed-up factor, e.g. 86400 = one day per second (default: 0, as fast as possible)",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="send only the first N events")
    add_env_argument(
        p,
        "--items-topic",
        "ITEMS_TOPIC",
        default="items",
        help="where a history file's static columns go, one record per item, before the events "
        "('' sends none)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "topics",
        help="create the service's topics",
        description="Create the sales, forecast, dead-letter and (compacted) items topics where missing.",
    )
    add_kafka_arguments(p)
    add_env_argument(p, "--forecast-topic", "FORECAST_TOPIC", default="forecasts", help="output topic")
    add_env_argument(
        p, "--dead-letter-topic", "DEAD_LETTER_TOPIC", default="sales.dlq", help="dead-letter topic"
    )
    add_env_argument(
        p, "--items-topic", "ITEMS_TOPIC", default="items", help="item attributes (compacted; '' for none)"
    )
    add_env_argument(
        p, "--partitions", "PARTITIONS", type=positive_int, default=4, help="partitions per topic"
    )
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser(
        "broker",
        help="run a local single-node Apache Kafka broker (KRaft)",
        description="Fetch Apache Kafka from Maven Central into the cache (once), format a "
        "KRaft log directory and run a combined broker/controller on 127.0.0.1.",
    )
    from stream.broker import add_broker_arguments

    add_broker_arguments(p)
    p.set_defaults(func=cmd_broker)
    return parser


def parse_command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with flags over environment over ``--config`` file over defaults.

    Exits with a usage error (status 2) naming the setting when a value is invalid.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    if getattr(args, "config", None) is not None:
        from stream.config_file import ConfigFileError, apply_config_file

        try:
            apply_config_file(sub, args.config)
        except ConfigFileError as exc:
            sub.error(str(exc))
        # Parse again so the file's values go through the flags' types like any default.
        args = parser.parse_args(argv)
    check_env_choices(sub, args)
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mqcast``."""
    args = parse_command_line(argv)
    # Before torch or numpy allocate anything: every subcommand runs the model in batches.
    from stream.allocator import keep_freed_memory

    keep_freed_memory()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.WARNING)
        # The client warns about its own slow loop turns whenever the CPU is busy forecasting.
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except MqcastError as exc:
        print(f"mqcast {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
