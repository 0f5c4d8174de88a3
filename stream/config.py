"""Configuration of the service: one small typed object per component, from flags and environment.

Every setting has a flag and an environment variable with the ``MQCAST_`` prefix; the flag wins, then
the environment, then the default. ``--help`` shows each setting's variable and default.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.batcher import BatcherConfig

ENV_PREFIX = "MQCAST_"

#: What the model's layers can compute in (``--precision``; torch's dtypes in ``stream.inference``).
PRECISION_NAMES = ("fp32", "bf16", "fp16")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """``'500ms'``, ``'30s'``, ``'10m'``, ``'1h'``, ``'2d'`` (bare numbers are seconds) to milliseconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 500ms, 30s, 10m, 1h or 2d")
    value, unit = match.groups()
    return round(float(value) * _UNIT_MS[unit or "s"])


def _on_off(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not on/off")


def _int_between(text: str, low: int, high: int | None) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise argparse.ArgumentTypeError(f"{value} must be {bound}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_between(text, 1, None)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be > 0")
    return value


def decay_rate(text: str) -> float:
    """argparse type: a decay in [0, 1) (0 meaning 'off')."""
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} must be in [0, 1)")
    return value


def share(text: str) -> float:
    """argparse type: a share of the time, in (0, 1]."""
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} must be in (0, 1]")
    return value


def quantile_list(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated quantile levels, increasing and strictly inside (0, 1)."""
    try:
        qs = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from exc
    if not qs or any(not 0 < q < 1 for q in qs) or list(qs) != sorted(set(qs)):
        raise argparse.ArgumentTypeError(
            f"{text!r}: quantiles must be increasing and strictly between 0 and 1"
        )
    return qs


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_between(text, 0, None)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 meaning 'disabled' or 'any free port' as the flag says."""
    return _int_between(text, 0, 65535)


class EnvDefault(argparse.Action):
    """An argparse action whose default is read from an environment variable.

    argparse runs a string default through the argument's ``type`` like a flag value, so a bad value
    in the environment fails at start with a usage error.
    """

    def __init__(self, env: str, required: bool = False, default: Any = None, **kwargs: Any) -> None:
        self.env = env
        if env in os.environ:
            default = os.environ[env]
            required = False
        help_text = kwargs.get("help") or ""
        shown = "required" if required and default is None else f"default: {default}"
        kwargs["help"] = f"{help_text} (env {env}; {shown})".strip()
        super().__init__(default=default, required=required, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)


def add_env_argument(parser: argparse.ArgumentParser | Any, flag: str, name: str, **kwargs: Any) -> None:
    """Add ``flag`` whose environment variable is ``MQCAST_<NAME>``."""
    parser.add_argument(flag, action=EnvDefault, env=ENV_PREFIX + name, **kwargs)


def check_env_choices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Fail with a usage error when an environment default is not one of the flag's choices.

    argparse converts string defaults through ``type`` (so bad numbers already fail) but never checks
    ``choices`` for defaults.
    """
    for action in parser._actions:
        if isinstance(action, EnvDefault) and action.choices is not None:
            value = getattr(args, action.dest, None)
            if value is not None and value not in action.choices:
                choices = ", ".join(map(str, action.choices))
                parser.error(f"{action.env}={value!r} is not one of {choices}")
    return args


@dataclass(frozen=True)
class KafkaConfig:
    """Where the service reads and writes."""

    bootstrap: str = "127.0.0.1:9092"
    sales_topic: str = "sales"
    forecast_topic: str = "forecasts"
    dead_letter_topic: str = "sales.dlq"
    #: Item attributes (compacted; DESIGN.md), read only for a model with static columns; "": none.
    items_topic: str = "items"
    group_id: str = "mqcast"
    client_id: str = "mqcast"
    max_poll_records: int = 2000
    poll_timeout_ms: int = 100
    commit_interval_ms: int = 1000
    #: "range" (Kafka's default, eager) or "cooperative-sticky" (moves only the partitions that must move).
    assignor: str = "range"
    #: Static membership: a restarted instance with the same id gets its partitions back without a rebalance.
    group_instance_id: str | None = None
    #: How long the group waits for a silent member before moving its partitions (a crash's cost).
    session_timeout_ms: int = 45_000


@dataclass(frozen=True)
class DurabilityConfig:
    """How partition state survives crashes and moves between instances."""

    #: Snapshot partition state to a compacted changelog topic and restore it on assignment.
    changelog: bool = True
    #: How often a snapshot is written (also on revoke and shutdown); a restore replays the input since.
    checkpoint_interval_ms: int = 30_000
    #: The most of the time periodic checkpoints may take: one that took T seconds (snapshots
    #: encoded on the loop, then written and acknowledged beside it) puts the next at least T / share
    #: later, when that is longer than the interval. A snapshot grows with the items (about 3 KB
    #: each, 30 s for 1M on the development machine), so a large partition is snapshotted less
    #: often, not all the time.
    checkpoint_share: float = 0.1
    #: Kafka transactions: forecasts, dead letters, snapshots and offsets commit atomically.
    exactly_once: bool = False


@dataclass(frozen=True)
class ModelServeConfig:
    """Which model runs where, and what the service expects of it."""

    path: Path = Path("model.pt")
    device: str = "auto"
    bucket: str = "D"
    #: What the model's layers compute in (one of ``PRECISION_NAMES``); forecasts stay float32.
    precision: str = "fp32"
    #: torch's CPU threads for the process; 0 leaves torch's default (one per core).
    torch_threads: int = 0
    #: Threads running forwards side by side; 0: one on a GPU, one per torch thread on a CPU.
    workers: int = 0


@dataclass(frozen=True)
class MetricsConfig:
    """Where Prometheus scrapes the service and probes its health (port 0 disables the endpoint)."""

    host: str = "127.0.0.1"
    port: int = 9464
    #: ``/healthz`` fails once the consumer loop has not completed a turn for this long.
    stall_after_s: float = 120.0


@dataclass(frozen=True)
class ReloadConfig:
    """Hot model reload: whether the model path is watched for a new artefact, and how often."""

    watch: bool = False
    interval_s: float = 10.0

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError(f"model watch interval must be > 0 seconds, got {self.interval_s}")


@dataclass(frozen=True)
class FlowConfig:
    """Backpressure: how much forecasting one loop turn may do before the consumer polls again.

    A bucket roll of a large catalogue is more work than one turn may hold without the group
    deciding the member is dead (``max_poll_interval_ms``). Work beyond ``turn_budget_ms`` waits in
    the batcher, the input partitions are paused until it is done, and the loop keeps polling.
    """

    turn_budget_ms: int = 5_000
    #: Pending forecast rows above which input is paused even within the budget.
    max_pending_rows: int = 1_000_000
    max_poll_interval_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.turn_budget_ms * 4 > self.max_poll_interval_ms:
            raise ValueError(
                f"the turn budget ({self.turn_budget_ms} ms) must be at most a quarter of "
                f"max_poll_interval_ms ({self.max_poll_interval_ms} ms)"
            )


@dataclass(frozen=True)
class ServiceConfig:
    """All settings of ``mqcast serve``."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    model: ModelServeConfig = field(default_factory=ModelServeConfig)
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    durability: DurabilityConfig = field(default_factory=DurabilityConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    allowed_lateness_ms: int = 600_000
    #: Forget items that sold nothing in this many closed buckets (0: never), bounding memory.
    evict_after_buckets: int = 0


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that talks to Kafka."""
    add_env_argument(
        parser, "--bootstrap", "BOOTSTRAP", default=KafkaConfig.bootstrap, help="Kafka bootstrap servers"
    )
    add_env_argument(
        parser, "--sales-topic", "SALES_TOPIC", default=KafkaConfig.sales_topic, help="input topic"
    )


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mqcast serve`` (and of ``mqcast demo``, which runs the same service)."""
    add_env_argument(
        parser,
        "--config",
        "CONFIG",
        type=Path,
        default=None,
        help="TOML file of settings named like these flags (flags and environment override it)",
    )
    add_kafka_arguments(parser)
    g = parser.add_argument_group("topics and group")
    add_env_argument(
        g, "--forecast-topic", "FORECAST_TOPIC", default=KafkaConfig.forecast_topic, help="output topic"
    )
    add_env_argument(
        g,
        "--dead-letter-topic",
        "DEAD_LETTER_TOPIC",
        default=KafkaConfig.dead_letter_topic,
        help="dead-letter topic",
    )
    add_env_argument(
        g,
        "--items-topic",
        "ITEMS_TOPIC",
        default=KafkaConfig.items_topic,
        help="compacted topic of item attributes (store, category, ...), read only when the model has "
        "static columns; '' serves such a model without them (every item as unknown)",
    )
    add_env_argument(g, "--group-id", "GROUP_ID", default=KafkaConfig.group_id, help="consumer group")
    add_env_argument(g, "--client-id", "CLIENT_ID", default=KafkaConfig.client_id, help="client id prefix")
    add_env_argument(
        g,
        "--max-poll-records",
        "MAX_POLL_RECORDS",
        type=positive_int,
        default=KafkaConfig.max_poll_records,
        help="records per poll",
    )
    add_env_argument(
        g,
        "--commit-interval",
        "COMMIT_INTERVAL",
        type=parse_duration_ms,
        default="1s",
        help="how often forecasts are flushed and offsets committed",
    )
    add_env_argument(
        g,
        "--assignor",
        "ASSIGNOR",
        choices=("range", "cooperative-sticky"),
        default=KafkaConfig.assignor,
        help="partition assignment strategy",
    )
    add_env_argument(
        g,
        "--group-instance-id",
        "GROUP_INSTANCE_ID",
        default=None,
        help="static group membership id of this instance (unset: dynamic membership)",
    )
    add_env_argument(
        g,
        "--session-timeout",
        "SESSION_TIMEOUT",
        type=parse_duration_ms,
        default="45s",
        help="how long the group waits for a silent member before moving its partitions (>= 6s)",
    )
    d = parser.add_argument_group("durability")
    add_env_argument(
        d,
        "--changelog",
        "CHANGELOG",
        type=_on_off,
        default="on",
        help="snapshot state to a compacted changelog topic and restore it on assignment (on/off)",
    )
    add_env_argument(
        d,
        "--checkpoint-interval",
        "CHECKPOINT_INTERVAL",
        type=parse_duration_ms,
        default="30s",
        help="how often state snapshots are written",
    )
    add_env_argument(
        d,
        "--checkpoint-share",
        "CHECKPOINT_SHARE",
        type=share,
        default="0.1",
        help="the most of the time periodic snapshots may take to write: one that took T s (encoded, "
        "written and acknowledged) puts the next at least T / share later (a large state is "
        "snapshotted less often)",
    )
    add_env_argument(
        d,
        "--exactly-once",
        "EXACTLY_ONCE",
        type=_on_off,
        default="off",
        help="commit forecasts, snapshots and offsets in one Kafka transaction (readers use read_committed; "
        "give each instance its own --client-id or --group-instance-id)",
    )
    m = parser.add_argument_group("model")
    add_env_argument(
        m,
        "--model",
        "MODEL",
        type=Path,
        default=None,
        help="TorchScript model artefact, or a directory whose newest *.pt is the model",
    )
    add_env_argument(
        m,
        "--model-watch",
        "MODEL_WATCH",
        type=_on_off,
        default="off",
        help="swap in a new artefact at --model when it changes (validated first; a bad one is refused)",
    )
    add_env_argument(
        m,
        "--model-watch-interval",
        "MODEL_WATCH_INTERVAL",
        type=parse_duration_ms,
        default="10s",
        help="how often the model path is checked",
    )
    add_env_argument(
        m,
        "--device",
        "DEVICE",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model runs; auto picks cuda when available",
    )
    add_env_argument(
        m,
        "--precision",
        "PRECISION",
        choices=PRECISION_NAMES,
        default="fp32",
        help="what the model's layers compute in; forecasts stay float32 (`python -m bench inference "
        "--precisions` and `python -m bench precision` measure the speed and accuracy of each)",
    )
    add_env_argument(
        m,
        "--torch-threads",
        "TORCH_THREADS",
        type=non_negative_int,
        default=0,
        help="torch CPU threads (0: one per core); on a CPU, one member per core with 1 thread each "
        "forecasts more than one member with all of them (`python -m bench processes`)",
    )
    add_env_argument(
        m,
        "--model-workers",
        "MODEL_WORKERS",
        type=non_negative_int,
        default=0,
        help="threads running model batches side by side (0: one on a GPU; on a CPU one per torch "
        "thread, each batch single-threaded, which `python -m bench inference` measured faster "
        "than one batch at a time over all threads)",
    )
    add_env_argument(
        m,
        "--bucket",
        "BUCKET",
        choices=("h", "D", "W", "M"),
        default="D",
        help="bucket unit the service counts demand in; the model must have been trained on it",
    )
    add_env_argument(
        m,
        "--allowed-lateness",
        "ALLOWED_LATENESS",
        type=parse_duration_ms,
        default="10m",
        help="how late an event may be before its bucket closes without it",
    )
    add_env_argument(
        m,
        "--evict-after",
        "EVICT_AFTER",
        type=non_negative_int,
        default=0,
        help="forget items that sold nothing in this many closed buckets (0: keep every item)",
    )
    b = parser.add_argument_group("micro-batching")
    add_env_argument(
        b, "--max-batch", "MAX_BATCH", type=positive_int, default=1024, help="item forecasts per model call"
    )
    add_env_argument(
        b,
        "--max-delay",
        "MAX_DELAY",
        type=parse_duration_ms,
        default="50ms",
        help="longest a closed bucket waits for its batch to fill",
    )
    f = parser.add_argument_group("backpressure")
    add_env_argument(
        f,
        "--turn-budget",
        "TURN_BUDGET",
        type=parse_duration_ms,
        default="5s",
        help="forecasting one loop turn may do before polling again; the rest waits with input paused",
    )
    add_env_argument(
        f,
        "--max-pending",
        "MAX_PENDING",
        type=positive_int,
        default=FlowConfig.max_pending_rows,
        help="pending forecast rows above which input partitions are paused",
    )
    add_env_argument(
        f,
        "--max-poll-interval",
        "MAX_POLL_INTERVAL",
        type=parse_duration_ms,
        default="5m",
        help="longest gap between polls before the group evicts this member (at least 4x --turn-budget)",
    )
    p = parser.add_argument_group("metrics and health")
    add_env_argument(p, "--metrics-host", "METRICS_HOST", default="127.0.0.1", help="metrics bind address")
    add_env_argument(
        p,
        "--metrics-port",
        "METRICS_PORT",
        type=port_number,
        default=9464,
        help="port of /metrics, /healthz and /readyz (0 disables)",
    )
    add_env_argument(
        p,
        "--liveness-stall",
        "LIVENESS_STALL",
        type=parse_duration_ms,
        default="2m",
        help="/healthz fails when the consumer loop has not turned for this long",
    )


def service_config_from_args(args: argparse.Namespace) -> ServiceConfig:
    """Build the typed configuration from parsed (and env-resolved) arguments."""
    kafka = KafkaConfig(
        bootstrap=args.bootstrap,
        sales_topic=args.sales_topic,
        forecast_topic=args.forecast_topic,
        dead_letter_topic=args.dead_letter_topic,
        items_topic=args.items_topic,
        group_id=args.group_id,
        client_id=args.client_id,
        max_poll_records=args.max_poll_records,
        commit_interval_ms=args.commit_interval,
        assignor=args.assignor,
        group_instance_id=args.group_instance_id,
        session_timeout_ms=args.session_timeout,
    )
    model = ModelServeConfig(
        path=args.model,
        device=args.device,
        bucket=args.bucket,
        precision=args.precision,
        torch_threads=args.torch_threads,
        workers=args.model_workers,
    )
    batcher = BatcherConfig(max_batch=args.max_batch, max_delay_ms=float(args.max_delay))
    metrics = MetricsConfig(
        host=args.metrics_host, port=args.metrics_port, stall_after_s=args.liveness_stall / 1000.0
    )
    reload = ReloadConfig(watch=args.model_watch, interval_s=args.model_watch_interval / 1000.0)
    flow = FlowConfig(
        turn_budget_ms=args.turn_budget,
        max_pending_rows=args.max_pending,
        max_poll_interval_ms=args.max_poll_interval,
    )
    durability = DurabilityConfig(
        changelog=args.changelog,
        checkpoint_interval_ms=args.checkpoint_interval,
        checkpoint_share=args.checkpoint_share,
        exactly_once=args.exactly_once,
    )
    return ServiceConfig(
        kafka,
        model,
        batcher,
        metrics,
        durability,
        reload,
        flow,
        allowed_lateness_ms=args.allowed_lateness,
        evict_after_buckets=args.evict_after,
    )
