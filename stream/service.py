"""The consumer service: poll sales, update state, forecast closed buckets, publish, commit.

One instance owns the partitions the group assigns it. For each poll it decodes and validates the
events, dead-letters the bad and the late ones, updates the partition's state, and queues a forecast
request for every bucket the watermark closes. Requests run through the model in micro-batches; their
forecasts are recorded in the ledger (the next bucket scores them) and published. Offsets are
committed only after everything they caused has been acknowledged.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import CommitFailedError, KafkaConnectionError, KafkaError, KafkaTimeoutError
from kafka.future import Future
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry

from model.export import feedback_previous_of, feedback_window_of
from state.config import StateConfig
from state.feedback import feedback_feature_names
from state.partition import PartitionState
from state.snapshot import restore, snapshot
from stream.batcher import ForecastRequest, MicroBatcher, cut_at_batches
from stream.changelog import Changelog, changelog_topic
from stream.config import ServiceConfig
from stream.decode import TimestampCache, decode_events
from stream.errors import ModelMismatchError, MqcastError, OffsetOrderError
from stream.health import Health
from stream.inference import Predictor
from stream.inputs import PendingInputs, StaticTable, calendar_columns
from stream.items import ItemAttributes
from stream.metrics import ServiceMetrics
from stream.observer import ServiceObserver
from stream.pipeline import forecast_pipelined
from stream.publish import NATIVE_MESSAGES, PRODUCER_SETTINGS, ForecastFormat, Publisher, encode_forecasts
from stream.reload import ModelWatcher
from stream.snapshot_writer import Snapshot, SnapshotWriter, WriteDone
from stream.topics import FORECAST_TOPIC_CONFIGS, TopicSpec, ensure_topics, setting_drift
from stream.values_json import prepare_values_json

log = logging.getLogger("mqcast.service")

# Only the newest value of each changelog key matters; compact soon so restores read little.
_CHANGELOG_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": "600000",
    "min.cleanable.dirty.ratio": "0.1",
    "max.message.bytes": "1048576",
}


@dataclass
class ServiceStats:
    """Running totals, for progress displays and summaries."""

    events: int = 0
    invalid: int = 0
    late: int = 0
    buckets_closed: int = 0
    forecasts: int = 0
    commits: int = 0
    checkpoints: int = 0
    restored_partitions: int = 0
    replayed_events: int = 0
    suppressed_forecasts: int = 0


def check_model_fits(meta: dict, cfg: ServiceConfig) -> None:
    """Refuse a model whose metadata does not fit the service's configuration, saying why."""
    problems = []
    if meta.get("freq") != cfg.model.bucket:
        problems.append(
            f"the model was trained on {meta.get('freq')!r} buckets but the service counts "
            f"{cfg.model.bucket!r} buckets (--bucket / MQCAST_BUCKET)"
        )
    quantiles = tuple(meta.get("quantiles", ()))
    previous = int(meta.get("horizons", 0)) if feedback_previous_of(meta) else 0
    expected_fb = list(feedback_feature_names(quantiles, feedback_window_of(meta), previous))
    got_fb = list(meta.get("features", {}).get("feedback", []))
    if got_fb != expected_fb:
        problems.append(f"the model's feedback features {got_fb} are not the service's {expected_fb}")
    for key in ("context_length", "horizons"):
        if not isinstance(meta.get(key), int) or meta[key] < 1:
            problems.append(f"the model's metadata has no valid {key!r}")
    try:
        calendar_columns(meta)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise ModelMismatchError("refusing the model: " + "; ".join(problems))


def checkpoint_spacing(interval_s: float, last_took_s: float, share: float) -> float:
    """Seconds from one periodic checkpoint to the next, the last having taken ``last_took_s``.

    A checkpoint's snapshots are encoded on the loop and written beside it (with exactly-once, on
    it), taking the broker's and the network's time in proportion to the state: checkpoints
    ``interval_s`` apart would write all the time once a snapshot takes as long as the interval (a
    partition of 1M items takes about 30 s). Spacing them by at least ``last_took_s / share``
    keeps them to ``share`` of the time; a restore then replays more input, in proportion to the
    state it reads first anyway.
    """
    return max(interval_s, last_took_s / share)


def checkpoint_due(since_s: float, interval_s: float, last_took_s: float, share: float) -> bool:
    """Whether a periodic checkpoint is due ``since_s`` seconds after the last one
    (:func:`checkpoint_spacing`)."""
    return since_s >= checkpoint_spacing(interval_s, last_took_s, share)


def _retriable(exc: KafkaError) -> bool:
    """Whether a failed offset commit may wait for the next one: a lost connection, a timeout, a
    coordinator moving, or this member dropped from its generation (after a broker restart, say).

    In the last case the next poll rejoins the group, and the rebalance listener then restores the
    partitions it gets from their snapshots, so nothing is lost by not committing now.
    """
    if isinstance(exc, KafkaConnectionError | KafkaTimeoutError | CommitFailedError):
        return True
    return bool(getattr(exc, "retriable", False))


def _in_worker(
    fn: Callable[[list[TopicPartition]], None],
    tps: list[TopicPartition],
    on_loop: Callable[[Callable[[], None]], object],
) -> Future:
    """Run ``fn(tps)`` on a worker thread; the returned future resolves when it is done.

    The client calls rebalance listeners on its IO thread, and committing, flushing or reading the
    changelog from there would wait on that same thread. The listener awaits this future instead,
    and the worker resolves it through ``on_loop`` (the IO loop's thread-safe scheduler) so the loop
    wakes at once.
    """
    fut = Future()

    def work() -> None:
        try:
            fn(tps)
        except Exception as exc:  # reported through the future, re-raised in the listener
            # The loop takes plain functions only; the default argument keeps the exception alive.
            on_loop(lambda e=exc: fut.failure(e))
        else:
            on_loop(lambda: fut.success(None))

    threading.Thread(target=work, name="mqcast-rebalance", daemon=True).start()
    return fut


class _Rebalance(AsyncConsumerRebalanceListener):
    def __init__(self, service: ForecastService) -> None:
        self.service = service
        # kafka-python exposes no public way to schedule onto its IO loop from another thread.
        net = getattr(service.consumer, "_net", None)
        self.on_loop = net.call_soon_threadsafe if net is not None else (lambda cb: cb())

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await _in_worker(self.service.on_revoked, list(revoked), self.on_loop)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await _in_worker(self.service.on_assigned, list(assigned), self.on_loop)

    async def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        await _in_worker(self.service.on_lost, list(lost), self.on_loop)


class ForecastService:
    """One consumer instance of the forecasting service."""

    def __init__(
        self,
        cfg: ServiceConfig,
        predictor: Predictor,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: ServiceObserver | None = None,
        health: Health | None = None,
    ) -> None:
        check_model_fits(predictor.meta, cfg)
        self.health = health or Health(stall_after_s=cfg.metrics.stall_after_s)
        self.health.set_ready(False, "starting: the consumer has not joined its group yet")
        self.observer = observer or ServiceObserver()
        meta = predictor.meta
        self.cfg = cfg
        self.predictor = predictor
        self.clock = clock
        quantiles = tuple(float(q) for q in meta["quantiles"])
        self.state_cfg = StateConfig(
            freq=meta["freq"],
            context_length=int(meta["context_length"]),
            horizons=int(meta["horizons"]),
            quantiles=quantiles,
            feedback_window=feedback_window_of(meta),
            feedback_previous=feedback_previous_of(meta),
            allowed_lateness_ms=cfg.allowed_lateness_ms,
            evict_after_buckets=cfg.evict_after_buckets,
        )
        self.format = ForecastFormat(meta["freq"], predictor.version, quantiles, self.state_cfg.horizons)
        self.statics = StaticTable(
            tuple(meta.get("static_columns", ())), int(meta.get("model_args", {}).get("static_vocab", 1024))
        )
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ServiceMetrics(self.registry, quantiles)
        self._show_model(predictor)
        self.metrics.ready.set(0)
        self.watcher: ModelWatcher | None = None
        if cfg.reload.watch:
            self.watcher = ModelWatcher(
                cfg.model.path,
                cfg.model.device,
                predictor.meta,
                lambda m: check_model_fits(m, cfg),
                cfg.reload,
                on_refused=lambda path, reason: self.metrics.model_reloads.labels(result="refused").inc(),
                precision=cfg.model.precision,
                workers=predictor.workers,
            )
        self._paused = False
        self.batcher = MicroBatcher(cfg.batcher, clock)
        self.states: dict[int, PartitionState] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.stats = ServiceStats()
        self._timestamps = TimestampCache()
        self._last_commit = clock()
        self._last_checkpoint = clock()
        self._checkpoint_took = 0.0  # seconds the last checkpoint took to be acknowledged (checkpoint_due)
        self._dirty: set[int] = set()
        # Below these offsets a partition is being replayed after a restore: its output went out
        # before the crash, so it is recomputed (the ledger needs it) but not published again.
        self.replay_until: dict[TopicPartition, int] = {}
        self.exactly_once = cfg.durability.exactly_once
        if self.exactly_once and not cfg.durability.changelog:
            raise ValueError("exactly-once needs the changelog: state and offsets are committed together")
        k = cfg.kafka
        assignor = CooperativeStickyAssignor if k.assignor == "cooperative-sticky" else RangePartitionAssignor
        self.consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap,
            group_id=k.group_id,
            group_instance_id=k.group_instance_id,
            client_id=f"{k.client_id}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=k.max_poll_records,
            partition_assignment_strategy=(assignor,),
            session_timeout_ms=k.session_timeout_ms,
            max_poll_interval_ms=cfg.flow.max_poll_interval_ms,
            heartbeat_interval_ms=max(500, k.session_timeout_ms // 3),
            # Exactly-once reads only committed input (and restores only committed snapshots).
            isolation_level="read_committed" if self.exactly_once else "read_uncommitted",
        )
        producer = KafkaProducer(
            bootstrap_servers=k.bootstrap,
            client_id=f"{k.client_id}-producer",
            transactional_id=self._transactional_id() if self.exactly_once else None,
            **PRODUCER_SETTINGS,
        )
        self.publisher = Publisher(producer, k.forecast_topic, k.dead_letter_topic)
        # Pay the one-time costs now rather than in the first forecasts' latency: the output topics'
        # metadata (a first send waits for it) and the model's first calls.
        for topic in (k.forecast_topic, k.dead_letter_topic):
            try:
                producer.partitions_for(topic)
            except KafkaTimeoutError as exc:
                producer.close(timeout=0)
                self.consumer.close(autocommit=False)
                raise MqcastError(
                    f"output topic {topic!r} has no metadata on {k.bootstrap}: does it exist? "
                    "(`mqcast topics` creates the service's topics)"
                ) from exc
        # A forecast topic made before mqcast asked for a small segment index, or by hand, delays
        # the first forecasts after each of its segments rolls (stream/topics.py says why): say so
        # once, with the command that changes it. Reading the setting may be refused (ACLs).
        try:
            forecast_spec = TopicSpec(k.forecast_topic, 1, dict(FORECAST_TOPIC_CONFIGS))
            for drift in setting_drift(k.bootstrap, [forecast_spec]):
                if int(drift.found) > int(drift.wanted):  # a smaller index is an operator's choice
                    log.warning("%s", drift.advice(k.bootstrap))
        except (KafkaError, ValueError) as exc:
            log.info("could not read the forecast topic's settings: %s", exc)
        self.items: ItemAttributes | None = None
        if self.statics.columns and k.items_topic:
            try:
                self.items = ItemAttributes(
                    k.bootstrap, k.items_topic, self.statics, self._reject_item, k.client_id
                )
            except MqcastError:
                producer.close(timeout=0)
                self.consumer.close(autocommit=False)
                raise
            # Before the first forecast, so that it has every item's attributes the topic holds.
            self.items.catch_up()
        elif self.statics.columns:
            log.warning(
                "the model has static columns %s but no items topic is set: every item is served as unknown",
                list(self.statics.columns),
            )
        predictor.warm_up(min(cfg.batcher.max_batch, 1024))
        if not NATIVE_MESSAGES:  # the Python path's number table (0.1 s, 8 MB) now, not in the first batch
            prepare_values_json()
        if self.exactly_once:
            producer.init_transactions()
            producer.begin_transaction()
        self.changelog: Changelog | None = None
        self.snapshots: SnapshotWriter | None = None
        if cfg.durability.changelog:
            topic = changelog_topic(k.group_id, k.sales_topic)
            partitions = self.consumer.partitions_for_topic(k.sales_topic) or {0}
            ensure_topics(k.bootstrap, [TopicSpec(topic, len(partitions), _CHANGELOG_CONFIG)])
            if self.exactly_once:
                # Snapshots are part of each transaction, so they go with its producer, on the loop.
                self.changelog = Changelog(producer, k.bootstrap, topic, read_committed=True)
            else:
                # Written beside the loop (stream/snapshot_writer.py), by a producer of their own.
                writer = KafkaProducer(
                    bootstrap_servers=k.bootstrap, client_id=f"{k.client_id}-changelog", **PRODUCER_SETTINGS
                )
                self.changelog = Changelog(writer, k.bootstrap, topic)
                self.snapshots = SnapshotWriter(self.changelog, clock)
        self.consumer.subscribe([k.sales_topic], listener=_Rebalance(self))
        if self.watcher is not None:
            self.watcher.start()
        # What is loaded by now (torch's modules above all, the model, the clients: some 200k objects)
        # lives as long as the process. Left in the collector's oldest generation, every full pass
        # walked all of it: 80 ms and more a pass, every few seconds at 10k events/s, in the middle
        # of whichever bucket was being forecast. Frozen, a full pass takes a few ms (`python -m
        # bench latency` times them).
        gc.collect()
        gc.freeze()

    # -- the loop --------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """One poll and everything it causes; returns the number of records read."""
        timeout_ms = self.cfg.kafka.poll_timeout_ms
        wait = self.batcher.seconds_until_due()
        if wait is not None:
            timeout_ms = min(timeout_ms, int(wait * 1000))
        records = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.cfg.kafka.max_poll_records)
        if self.items is not None:
            self.items.poll()  # without waiting: new and changed items, between sales polls
        n = 0
        for tp, recs in records.items():
            if recs:
                self._process(tp, recs)
                n += len(recs)
        if self.batcher.due():
            self.run_batches(budget_s=self.cfg.flow.turn_budget_ms / 1000.0)
        self._apply_backpressure()
        if (self.clock() - self._last_commit) * 1000.0 >= self.cfg.kafka.commit_interval_ms:
            self.commit(drain=False)
        self.health.beat()
        return n

    def _apply_backpressure(self) -> None:
        """Pause input while forecasts wait beyond what one turn may do; resume once they are done.

        Paused partitions keep their place and their fetched records; polling goes on, so the member
        stays in its group however long the backlog takes.
        """
        backlog = self.batcher.pending_rows
        behind = backlog > 0 and (self.batcher.due() or backlog >= self.cfg.flow.max_pending_rows)
        if behind and not self._paused:
            assigned = list(self.consumer.assignment())
            if assigned:
                self.consumer.pause(*assigned)
                self._paused = True
                self.metrics.backpressure_pauses.inc()
                log.info("pausing input: %d forecast rows wait beyond this turn's budget", backlog)
        elif self._paused and backlog == 0:
            self.consumer.resume(*self.consumer.paused())
            self._paused = False
        self.metrics.partitions_paused.set(len(self.consumer.paused()) if self._paused else 0)

    def run(self, stop: threading.Event, idle_timeout_s: float | None = None) -> ServiceStats:
        """Serve until ``stop`` is set (or nothing arrives for ``idle_timeout_s``), then shut down cleanly."""
        idle_since = self.clock()
        try:
            while not stop.is_set():
                # A backlog being worked off with input paused is not idleness.
                if self.poll_once() or self.batcher.pending_rows:
                    idle_since = self.clock()
                elif idle_timeout_s is not None and self.clock() - idle_since >= idle_timeout_s:
                    break
        finally:
            self.close()
        return self.stats

    def _process(self, tp: TopicPartition, recs: list) -> None:
        replay_until = self.replay_until.get(tp, -1)
        if recs[0].offset < replay_until <= recs[-1].offset:
            # Split at the committed offset: what comes before it already had its output published.
            cut = next(i for i, r in enumerate(recs) if r.offset >= replay_until)
            self._process(tp, recs[:cut])
            self._process(tp, recs[cut:])
            return
        replaying = recs[-1].offset < replay_until
        batch = decode_events([r.value for r in recs], self._timestamps)
        for pos, reason in batch.invalid:
            if recs[pos].offset >= replay_until:
                self._dead_letter(tp, recs[pos], reason, "invalid")
        state = self.states.get(tp.partition)
        if state is None:
            state = self.states[tp.partition] = PartitionState(self.state_cfg, tp.partition)
        late = state.ingest(batch.item_ids, batch.event_ms, batch.qty, batch.price)
        for pos in batch.positions[late].tolist():
            if recs[pos].offset >= replay_until:
                self._dead_letter(
                    tp, recs[pos], "event is later than the allowed lateness: its bucket is closed", "late"
                )
        if replaying:
            self.stats.replayed_events += len(recs)
        self._dirty.add(tp.partition)
        n_late = int(late.sum())
        self.stats.events += len(recs)
        self.stats.invalid += len(batch.invalid)
        self.stats.late += n_late
        self.metrics.events_consumed.labels(partition=str(tp.partition)).inc(len(recs))
        if batch.invalid:
            self.metrics.events_invalid.inc(len(batch.invalid))
        if n_late:
            self.metrics.events_late.inc(n_late)
        self._close_ready(tp.partition, state, publish=not replaying)
        self.positions[tp] = recs[-1].offset + 1

    def _reject_item(
        self, value: bytes | None, key: bytes | None, reason: str, topic: str, partition: int, offset: int
    ) -> None:
        # Not committed anywhere (every start reads the whole items topic), so a bad record there
        # goes to the dead letters again at each start.
        self.publisher.dead_letter(value, key, reason, topic, partition, offset)
        self.metrics.dead_letters.labels(reason="bad_item_attributes").inc()

    def _dead_letter(self, tp: TopicPartition, rec, reason: str, kind: str) -> None:
        self.publisher.dead_letter(rec.value, rec.key, reason, tp.topic, tp.partition, rec.offset)
        self.metrics.dead_letters.labels(reason=kind).inc()

    def _close_ready(self, partition: int, state: PartitionState, publish: bool = True) -> None:
        while state.closable() is not None:
            # The forecasts of the previous bucket must be in the ledger before the next bucket
            # closes, because closing scores them.
            if self.batcher.has_pending(partition):
                self.run_batches()
            # Rows move when items are forgotten, so only with no request of this partition queued.
            evicted = state.evict_idle(self.state_cfg.evict_after_buckets)
            if evicted:
                self.metrics.items_evicted.inc(evicted)
            closed = state.close_next()
            self.stats.buckets_closed += 1
            self.metrics.buckets_closed.labels(partition=str(partition)).inc()
            self.metrics.observe_score(closed.score)
            self.observer.on_close(partition, closed)
            if closed.rows.size:
                self.batcher.add(partition, closed, publish=publish)
        self.metrics.items_tracked.set(sum(s.n_items for s in self.states.values()))

    def run_batches(self, budget_s: float | None = None) -> int:
        """Forecast queued requests, record them in the ledgers, publish and wait for acks.

        Without a budget every request runs. With one, requests run in slices of rows until the
        budget is spent; the rest stays queued, oldest first (see :meth:`_apply_backpressure`).
        A new model, if one is waiting, is swapped in first: a batch never mixes two models.
        """
        self._swap_model()
        if budget_s is None:
            return self._forecast(self.batcher.take())
        deadline = self.clock() + budget_s
        # Each slice waits for its acknowledgements, so slices are several model calls long.
        slice_rows = 8 * self.cfg.batcher.max_batch
        done = 0
        while self.batcher.pending_rows and (done == 0 or self.clock() < deadline):
            done += self._forecast(self.batcher.take(max_rows=slice_rows))
        return done

    def _swap_model(self) -> None:
        new = self.watcher.take() if self.watcher is not None else None
        if new is None:
            return
        old = self.predictor.version
        retired, self.predictor = self.predictor, new
        retired.close()
        self.format = ForecastFormat(
            self.state_cfg.freq, new.version, self.state_cfg.quantiles, self.state_cfg.horizons
        )
        self._show_model(new)
        self.metrics.model_reloads.labels(result="loaded").inc()
        log.info("model %s replaced by %s between batches", old, new.version)

    def _show_model(self, predictor: Predictor) -> None:
        self.metrics.model.info(
            {
                "version": predictor.version,
                "device": str(predictor.device),
                "precision": predictor.precision,
                "freq": self.state_cfg.freq,
            }
        )

    def _forecast(self, requests: list[ForecastRequest]) -> int:
        """Forecast, record, publish and acknowledge ``requests``, one model batch after another.

        Each batch's forecasts are recorded and sent as soon as the batch is done, while the next
        batches are with the model (:attr:`stream.inference.Predictor.depth`). A request's latency
        ends when the broker acknowledges its last forecast.
        """
        if not requests:
            return 0
        started = self.clock()
        horizons = self.state_cfg.horizons
        # Assembled a model batch at a time, as the model asks for them (forecast_pipelined).
        batch = PendingInputs(
            [r.closed for r in requests],
            self.state_cfg.freq,
            horizons,
            self.statics,
            calendar_columns(self.predictor.meta),
            split_past=self.predictor.split_past,
        )
        out = np.empty((batch.rows, horizons, len(self.state_cfg.quantiles)), dtype=np.float32)
        produced_ms = int(time.time() * 1000)
        acked: dict[int, list[float]] = {}  # request -> when each of its output partitions was acked

        def on_batch(rows: int, seconds: float) -> None:
            self.metrics.inference_seconds.observe(seconds)
            self.metrics.batch_size.observe(rows)

        # Pieces of at most one model batch, so the first forecasts of a big bucket go out while the
        # rest of it is still with the model.
        pieces = cut_at_batches(requests, self.cfg.batcher.max_batch)

        fmt = self.format

        def encode(p: int, values: np.ndarray) -> list[bytes] | None:
            # Runs on a model worker (see prepares_on_workers): reads only the piece and the format.
            _, piece = pieces[p]
            if not piece.publish:
                return None
            return encode_forecasts(fmt, piece.closed.item_ids, piece.closed.bucket, values, produced_ms)

        def on_piece(p: int, values: np.ndarray, messages: list[bytes] | None) -> None:
            origin, piece = pieces[p]
            if messages is None:  # not encoded on a worker
                messages = encode(p, values)
            self._publish_request(origin, piece, values, acked, messages)

        forecast_pipelined(
            self.predictor.submit,
            batch,
            out,
            self.cfg.batcher.max_batch,
            [piece.rows for _, piece in pieces],
            on_piece,
            on_batch,
            depth=self.predictor.depth,
            # With several model workers, one encodes a batch's messages while the others run the
            # model: 3.5-8% more forecasts/s at batch 1024 on two cores (the inference bench's step,
            # both ways alternated in one process).
            prepare=encode if self.predictor.prepares_on_workers else None,
        )
        handed = self.clock()
        self.publisher.flush()
        done = self.clock()
        # The published requests, once, so that the latencies and their parts pair up in order.
        sent = [(i, r) for i, r in enumerate(requests) if r.publish]
        published = sum(r.rows for _, r in sent)
        latencies = [max(0.0, max(acked.get(i) or [done]) - r.closed_at) for i, r in sent]
        for lat in latencies:
            self.metrics.end_to_end_seconds.observe(lat)
        self.observer.on_published(latencies, published)
        if sent:
            queued = [max(0.0, started - r.closed_at) for _, r in sent]
            for wait in queued:
                self.metrics.turn_wait_seconds.observe(wait)
            self.metrics.ack_wait_seconds.observe(done - handed)
            self.observer.on_turn(queued, handed - started, done - handed)
        self.metrics.forecasts_published.inc(published)
        if published:
            self.metrics.last_forecast_timestamp.set(time.time())
        self.stats.forecasts += published
        self.stats.suppressed_forecasts += batch.rows - published
        return batch.rows

    def _publish_request(
        self,
        index: int,
        r: ForecastRequest,
        values: np.ndarray,
        acked: dict[int, list[float]],
        messages: list[bytes] | None,
    ) -> None:
        """Record one piece of request ``index`` in its ledger and, unless it replays output that
        already went out, send its ``messages`` (None only for a piece that does not publish);
        ``acked[index]`` collects when its partitions' last sends are acknowledged."""
        self.states[r.partition].record_forecasts(r.closed.bucket, r.closed.rows, values)
        self.observer.on_forecasts(r.partition, r.closed, values)
        if not r.publish:
            return
        times = acked.setdefault(index, [])
        for last in self.publisher.forecasts(r.closed.item_ids, messages):
            # Runs on the producer's thread when the broker acknowledges the last message of one
            # output partition; list.append is atomic, so no lock is needed.
            last.add_callback(lambda _meta, times=times: times.append(self.clock()))

    def commit(self, checkpoint: bool = False, drain: bool = True) -> None:
        """Commit what has been fully handled, in order:

        1. forecast every queued request (their forecasts are part of what the offsets cover); with
           ``drain=False`` (the loop's periodic commit while a backlog waits) partitions that still
           have queued requests are left out of steps 2 and 4 until their forecasts are out;
        2. when due (or asked), encode a state snapshot of every changed partition and write them to
           the changelog beside the loop (:class:`SnapshotWriter`; one write at a time, and revoke
           and shutdown wait for theirs), or with exactly-once in the transaction;
        3. wait until the broker acknowledged every forecast and dead letter (with exactly-once,
           every snapshot too);
        4. commit the input offsets, which may only move forward. They need not wait for a snapshot
           written beside the loop: a restore seeks to the offset its snapshot includes.
        """
        # A transaction commits all output at once, so it may only close with nothing half done.
        if drain or self.exactly_once:
            self.run_batches()
        held = {r.partition for r in self.batcher.pending()}
        durability = self.cfg.durability
        # Exactly-once commits a snapshot with every offset commit: a restore then starts exactly
        # where the committed output ends, with nothing to replay.
        checkpoint = checkpoint or self.exactly_once
        if self.snapshots is not None:
            if checkpoint:
                self._checkpoint_written(self.snapshots.wait())  # the one in flight first
            else:
                self._checkpoint_written(self.snapshots.finished())
        started = self.clock()
        wrote = 0
        if (
            self.changelog is not None
            and not (self.snapshots is not None and self.snapshots.busy)
            and (
                checkpoint
                or checkpoint_due(
                    started - self._last_checkpoint,
                    durability.checkpoint_interval_ms / 1000.0,
                    self._checkpoint_took,
                    durability.checkpoint_share,
                )
            )
        ):
            wrote = self._checkpoint(held, started)
            if wrote and self.snapshots is not None:
                if checkpoint:
                    # Revoke and shutdown hand the state on: it is acknowledged before they return.
                    self._checkpoint_written(self.snapshots.wait())
                self.metrics.checkpoint_hold_seconds.observe(self.clock() - started)
        self.publisher.flush()
        if wrote and self.snapshots is None:
            # Written and acknowledged (with the turn's last forecasts, a small part at any size).
            took = self.clock() - started
            self.metrics.checkpoint_hold_seconds.observe(took)
            self._checkpoint_written(WriteDone((), started, took))
        offsets = {}
        for tp, pos in self.positions.items():
            if tp.partition in held:
                continue
            last = self.committed.get(tp)
            if last is not None and pos <= last:
                continue  # replaying after a restore: the group is already past this point
            offsets[tp] = OffsetAndMetadata(pos, "", -1)
        if self.exactly_once:
            # Output, snapshots and input offsets become visible together, or not at all.
            self._check_forward(offsets)
            producer = self.publisher.producer
            if offsets:
                producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
            producer.commit_transaction()
            producer.begin_transaction()
            self.committed.update({tp: o.offset for tp, o in offsets.items()})
            self.stats.commits += 1
            self.metrics.commits.inc()
        elif offsets:
            self._check_forward(offsets)
            try:
                self.consumer.commit(offsets)
            except KafkaError as exc:
                if not _retriable(exc):
                    raise
                # The broker or coordinator is away for a moment. The output these offsets cover is
                # acknowledged, and the next commit carries the same (or later) offsets, so waiting
                # for it loses nothing; dying here would only force a restore.
                log.warning("offset commit failed (%s); retrying with the next commit", exc)
            else:
                self.committed.update({tp: o.offset for tp, o in offsets.items()})
                self.stats.commits += 1
                self.metrics.commits.inc()
        self._last_commit = self.clock()
        self._update_lag()

    def _check_forward(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        for tp, o in offsets.items():
            last = self.committed.get(tp)
            if last is not None and o.offset < last:
                raise OffsetOrderError(
                    f"{tp.topic}[{tp.partition}]: commit {o.offset} is behind committed {last}"
                )

    def _checkpoint(self, held: set[int] = frozenset(), started: float | None = None) -> int:
        """Snapshot every changed partition not ``held`` and start writing them: beside the loop
        (:class:`SnapshotWriter`), or with exactly-once in the transaction, for the commit's flush
        to wait for. Returns how many."""
        assert self.changelog is not None
        started = self.clock() if started is None else started
        wrote = 0
        beside: list[Snapshot] = []
        for tp, pos in self.positions.items():
            # A partition with forecasts still queued has closed buckets whose forecasts are not in
            # its ledger yet; its snapshot waits until they are.
            if tp.partition in self._dirty and tp.partition in self.states and tp.partition not in held:
                data = snapshot(self.states[tp.partition], pos)
                self._dirty.discard(tp.partition)
                wrote += 1
                if self.snapshots is not None:
                    beside.append(Snapshot(tp.partition, data, pos))
                else:
                    # Into the transaction as each is encoded, so that one partition's bytes at a
                    # time wait beside the producer's buffer.
                    self.publisher.track(self.changelog.write(tp.partition, data, pos)[1])
        self.stats.checkpoints += wrote
        self._last_checkpoint = started
        if self.snapshots is not None and beside:
            self.snapshots.start(beside, started)
        return wrote

    def _checkpoint_written(self, done: WriteDone | None) -> None:
        """Account for a checkpoint whose snapshots are all acknowledged: it spaces the next."""
        if done is None:
            return
        self._checkpoint_took = done.seconds
        self.metrics.checkpoint_seconds.observe(done.seconds)

    def _update_lag(self) -> None:
        # During a cooperative revoke the partitions being handed over are no longer assigned.
        assigned = self.consumer.assignment()
        for tp, pos in self.positions.items():
            if tp not in assigned:
                continue
            high = self.consumer.highwater(tp)
            if high is not None:
                self.metrics.consumer_lag.labels(partition=str(tp.partition)).set(max(0, high - pos))

    # -- group membership ------------------------------------------------------------------------

    def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Before giving partitions up: finish, snapshot and commit everything they caused."""
        if self.positions:
            self.commit(checkpoint=True)
        elif self.snapshots is not None:
            self._checkpoint_written(self.snapshots.wait())
        self._forget(revoked)

    def on_lost(self, lost: list[TopicPartition]) -> None:
        """Partitions taken away without a revoke (this member was evicted): nothing may be committed
        for them any more; their new owner restores the last snapshot."""
        self.batcher.take()  # their forecasts would be published by an instance that no longer owns them
        if self.snapshots is not None:
            # A write in flight may hold their snapshots: let it end now, not beside their new
            # owner's restore and first checkpoint.
            self._checkpoint_written(self.snapshots.wait())
        if self.exactly_once:
            # The open transaction holds output of every partition: abort it, and rewind the
            # partitions still owned to their last committed snapshot.
            self.publisher.producer.abort_transaction()
            self.publisher.producer.begin_transaction()
            self.publisher.discard()
            kept = [tp for tp in self.positions if tp not in set(lost)]
            self._forget(list(self.positions))
            self.on_assigned(kept)
        else:
            self._forget(lost)

    def _forget(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.states.pop(tp.partition, None)
            self.positions.pop(tp, None)
            self.committed.pop(tp, None)
            self.replay_until.pop(tp, None)
            self._dirty.discard(tp.partition)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(str(tp.partition))
        self.metrics.items_tracked.set(sum(s.n_items for s in self.states.values()))

    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Take partitions over: restore their state and seek to the offset that state includes."""
        self.health.set_ready(False, f"restoring the state of {len(assigned)} partition(s)")
        self.metrics.ready.set(0)
        try:
            self._restore(assigned)
        except Exception as exc:
            self.health.set_ready(False, f"restore failed: {exc}")
            raise
        if self._paused:
            # A rebalance resumes nothing by itself, and newly assigned partitions are not paused.
            self._paused = False
            self._apply_backpressure()
        self.health.set_ready(True)
        self.metrics.ready.set(1)

    def _restore(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            if tp.partition in self.states:
                continue  # kept across a cooperative rebalance
            committed = self.consumer.committed(tp)
            if committed is not None:
                self.committed[tp] = committed
            if self.changelog is None:
                self.states[tp.partition] = PartitionState(self.state_cfg, tp.partition)
                continue
            found = self.changelog.read_latest(tp.partition)
            if found is None:
                state, offset = PartitionState(self.state_cfg, tp.partition), None
            else:
                state, offset = restore(found[0], self.state_cfg)
                self.stats.restored_partitions += 1
            self.states[tp.partition] = state
            if offset is None:
                # No snapshot: the state is rebuilt from the start of the retained input.
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
                self.positions[tp] = offset
            if committed is not None:
                self.replay_until[tp] = committed
            log.info(
                "partition %d: %s, resuming at %s (committed %s)",
                tp.partition,
                "restored" if offset is not None else "no snapshot",
                offset,
                committed,
            )
        self.metrics.items_tracked.set(sum(s.n_items for s in self.states.values()))

    def _transactional_id(self) -> str:
        k = self.cfg.kafka
        # Stable per instance, so a restarted instance fences its dead predecessor and aborts the
        # transaction it left open (which would otherwise hold back read_committed readers until it
        # times out). Instances of one group therefore need distinct client or instance ids.
        return f"mqcast-{k.group_id}-{k.group_instance_id or k.client_id}"

    def close(self) -> None:
        """Finish the batch in hand, publish, snapshot, commit, and leave the group."""
        if self.watcher is not None:
            self.watcher.stop()
        self.health.set_ready(False, "shutting down")
        self.metrics.ready.set(0)
        try:
            if self.positions:
                self.commit(checkpoint=True)
        finally:
            self.consumer.close(autocommit=False)
            if self.items is not None:
                self.items.close()
            if self.snapshots is not None:
                self.snapshots.close()
            self.publisher.producer.close(timeout=10)
            self.predictor.close()
