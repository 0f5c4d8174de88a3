"""Inference: item-forecasts/s of the whole micro-batch step against the bare TorchScript forward.

The step is what the service does with a closed bucket: assemble the inputs (features, calendar),
run the model in batches, record the forecasts in the ledger and encode the forecast messages, with
as many batches queued with the model as the service queues (``Predictor.depth``). The bare figure
runs only the scripted forward, over ready tensors of the same rows in batches of the same size, in
the same run.

The two are timed by turns (:func:`alternated`), so that the machine's drift over the run falls on
both alike. On a CPU both are measured in the two ways the predictor can run the model: one model
thread whose forwards torch splits over its team of threads (torch's default), and one worker per
thread, each running whole batches single-threaded (the service's default). Each step's ratio is
given against the faster of the two bare forwards at that batch size.

A third figure, the caller's ceiling, is the step over a model that costs nothing
(:class:`InstantModel`): everything one process does around its forwards, laid out as a GPU's
caller does it. No device lets one process's step go faster, so on a GPU it tells how close the
step comes to its bound, and on a CPU it measures changes to that work without a GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.common import default_model, machine, positive_int_list, precision_list, table
from model.export import feedback_previous_of, feedback_window_of
from state.config import StateConfig
from state.partition import ClosedBucket, PartitionState
from stream.batcher import ForecastRequest, chunks, cut_at_batches
from stream.config import non_negative_int, positive_int
from stream.inference import Predictor
from stream.inputs import ModelInputs, PendingInputs, StaticTable, calendar_columns, inputs_for
from stream.pipeline import forecast_pipelined
from stream.publish import ForecastFormat, encode_forecasts

DAY = 86_400_000


def _closed_bucket(n_items: int, cfg: StateConfig) -> tuple[PartitionState, ClosedBucket]:
    rng = np.random.default_rng(0)
    s = PartitionState(cfg)
    ids = np.array([f"item-{i}" for i in range(n_items)], dtype=object)
    for d in range(cfg.context_length + 2):
        sel = rng.random(n_items) < 0.3
        s.ingest(
            ids[sel],
            np.full(sel.sum(), d * DAY + 3_600_000),
            rng.integers(1, 5, sel.sum()),
            np.full(sel.sum(), 2.0),
        )
        while s.closable() is not None:
            closed = s.close_next()
    return s, closed


def rate(fn: Callable[[], None], rows: int, min_s: float = 2.0) -> float:
    """Rows per second of ``fn`` (which handles ``rows`` rows a call), over at least ``min_s``."""
    return alternated({"fn": fn}, rows, min_s, rounds=1)["fn"]


def _timed(fn: Callable[[], None], min_s: float) -> tuple[int, float]:
    """Calls of ``fn`` made in at least ``min_s`` seconds (one at least), and the seconds they took."""
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < min_s:
        fn()
        n += 1
    return n, time.perf_counter() - t0


def alternated(
    fns: dict[str, Callable[[], None]], rows: int, min_s: float = 2.0, rounds: int = 4
) -> dict[str, float]:
    """Rows per second of each of ``fns`` (each handles ``rows`` rows a call), run by turns:
    ``rounds`` windows of ``min_s / rounds`` seconds each, one function after another.

    On a shared machine the speed drifts by tens of percent over seconds; figures taken one after
    the other (the bare forward for two seconds, then the step) put that drift into their ratio,
    while windows taken by turns share it."""
    for fn in fns.values():  # warm-up (twice: the TorchScript executor optimises at its second call)
        fn()
        fn()
    calls = dict.fromkeys(fns, 0)
    seconds = dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for name, fn in fns.items():
            n, s = _timed(fn, min_s / rounds)
            calls[name] += n
            seconds[name] += s
    return {name: calls[name] * rows / seconds[name] for name in fns}


def service_step(
    predictor: Predictor,
    state: PartitionState,
    closed: ClosedBucket,
    fmt: ForecastFormat,
    statics: StaticTable,
    batch: int,
    depth: int | None = None,
    split_past: bool | None = None,
) -> None:
    """What the service does with a closed bucket, less the producer's send: pieces of one model
    batch (``stream.pipeline.forecast_pipelined``), the inputs assembled a batch at a time,
    ``depth`` batches queued with the model (default: as many as the service queues), each
    batch's JSON on its model thread when there are several (as the service), the ledger on this
    one. ``split_past``: the past covariates in parts for the predictor to join (default: as the
    service hands them to this predictor, ``Predictor.split_past``)."""
    if split_past is None:
        split_past = predictor.split_past
    calendar = calendar_columns(predictor.meta)  # the columns the artefact reads, as the service
    pieces = cut_at_batches([ForecastRequest(0, closed, 0.0, 0.0)], batch)
    out = np.empty((closed.rows.size, fmt.horizons, len(fmt.quantiles)), dtype=np.float32)

    def encode(i: int, values: np.ndarray) -> list[bytes]:
        piece = pieces[i][1].closed
        return encode_forecasts(fmt, piece.item_ids, piece.bucket, values, 0)

    def record(i: int, values: np.ndarray, messages: list[bytes] | None) -> None:
        piece = pieces[i][1].closed
        state.record_forecasts(piece.bucket, piece.rows, values)
        if messages is None:
            encode(i, values)

    forecast_pipelined(
        predictor.submit,
        PendingInputs([closed], fmt.freq, fmt.horizons, statics, calendar, split_past),
        out,
        batch,
        [piece.rows for _, piece in pieces],
        record,
        depth=predictor.depth if depth is None else depth,
        prepare=encode if predictor.prepares_on_workers else None,
    )


class Workload:
    """A partition whose bucket has just closed over ``n_items`` items, and the service's step over
    it: the model's inputs assembled, the model run in batches, every forecast recorded in the
    ledger and encoded as its message (everything but the producer's send)."""

    def __init__(self, predictor: Predictor, n_items: int) -> None:
        meta = predictor.meta
        self.cfg = StateConfig(
            context_length=meta["context_length"],
            horizons=meta["horizons"],
            quantiles=tuple(meta["quantiles"]),
            feedback_window=feedback_window_of(meta),
            feedback_previous=feedback_previous_of(meta),
        )
        self.state, self.closed = _closed_bucket(n_items, self.cfg)
        self.rows = self.closed.rows.size
        # Every item with attributes, as the service has them from the items topic.
        self.statics = StaticTable(tuple(meta.get("static_columns", ())), 1024)
        for i, item in enumerate(self.closed.item_ids):
            self.statics.update(item, {c: (i * (k + 7)) % 50 for k, c in enumerate(self.statics.columns)})
        self.fmt = ForecastFormat("D", predictor.version, self.cfg.quantiles, self.cfg.horizons)
        self.calendar = calendar_columns(meta)

    def tensors(self, device: torch.device) -> list[torch.Tensor]:
        """The model's inputs for every row, ready on ``device`` (for the bare forward)."""
        ready = inputs_for(self.closed, "D", self.cfg.horizons, self.statics, self.calendar)
        return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in ready.arrays()]

    def forecasts(self, predictor: Predictor, batch: int) -> np.ndarray:
        """The model's forecasts of the first ``batch`` rows (at most all of them), [B, H, Q]."""
        pending = PendingInputs([self.closed], "D", self.cfg.horizons, self.statics, self.calendar)
        return predictor.predict(pending.slice(0, min(batch, self.rows)))

    def step(
        self, predictor: Predictor, batch: int, depth: int | None = None, split_past: bool | None = None
    ) -> None:
        """The service's own path over the closed bucket (:func:`service_step`)."""
        service_step(predictor, self.state, self.closed, self.fmt, self.statics, batch, depth, split_past)

    def parts(self, predictor: Predictor, batch: int, rounds: int = 3) -> dict[str, float]:
        """µs per forecast of each part of the step, run one after another (best of ``rounds``):
        input assembly (a model batch at a time, as the step assembles them), the model (all
        batches queued with the predictor at once, copies included), the ledger and the JSON of
        the messages."""
        best: dict[str, float] = {}
        spans = chunks(self.rows, batch)
        for _ in range(rounds):
            pending = PendingInputs(
                [self.closed], "D", self.cfg.horizons, self.statics, self.calendar, predictor.split_past
            )
            t0 = time.perf_counter()
            inputs = [pending.slice(*span) for span in spans]
            t1 = time.perf_counter()
            out = np.empty((self.rows, self.cfg.horizons, len(self.cfg.quantiles)), dtype=np.float32)
            futures = [predictor.submit(piece) for piece in inputs]
            for (start, stop), future in zip(spans, futures, strict=True):
                out[start:stop] = future.result()[0]
            t2 = time.perf_counter()
            self.state.record_forecasts(self.closed.bucket, self.closed.rows, out)
            t3 = time.perf_counter()
            encode_forecasts(self.fmt, self.closed.item_ids, self.closed.bucket, out, 0)
            t4 = time.perf_counter()
            times = {"inputs": t1 - t0, "model": t2 - t1, "ledger": t3 - t2, "JSON": t4 - t3}
            for k, v in times.items():
                best[k] = min(best.get(k, float("inf")), v * 1e6 / self.rows)
        return best


def bare_forward(predictor: Predictor, tensors: list[torch.Tensor], batch: int) -> Callable[[], None]:
    """The scripted forward alone over ready ``tensors``, ``batch`` rows a call, on the predictor's
    model threads like the service's forwards (all of them busy at once)."""
    n = tensors[0].shape[0]

    def forward(start: int, stop: int) -> None:
        with torch.inference_mode():
            predictor.module(*(t[start:stop] for t in tensors))

    def run() -> None:
        # The same rows as the step, batch by batch: the model reads as much fresh memory.
        for future in [predictor.on_model_thread(forward, *span) for span in chunks(n, batch)]:
            future.result()
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()

    return run


class InstantModel(Predictor):
    """A predictor whose model costs nothing: each forward hands back ready forecasts at once.

    It runs the caller's side of the step as on a GPU (one model thread, two batches queued, the
    past covariates in parts, the JSON on the caller's thread), so the step over it is the most one
    process can forecast whatever its device: the caller's ceiling. On a GPU the step is bound
    there, not by the model (README, "On a GPU"); this measures that bound on any machine."""

    def __init__(self, like: Predictor, forecasts: np.ndarray) -> None:
        """``forecasts`` [B, H, Q]: what every forward of up to B rows gives (its first rows)."""
        super().__init__(like.module, like.meta, torch.device("cpu"), workers=1)
        self.forecasts = forecasts

    @property
    def depth(self) -> int:
        return 2  # a GPU predictor's: its one worker and a spare

    @property
    def split_past(self) -> bool:
        return True

    def _forward(self, inputs: ModelInputs) -> np.ndarray:
        return self.forecasts[: inputs.target.shape[0]].copy()  # a new array, as a forward's


def _layouts(path: Path, device: str, precision: str) -> dict[str, Predictor]:
    """The ways to run the model worth comparing on ``device``, by name."""
    auto = Predictor.load(path, device, precision)
    if auto.workers == 1:
        return {"1 model thread": auto}
    team = Predictor.load(path, device, precision, workers=1)
    threads = torch.get_num_threads()
    return {
        f"1 model thread, torch team of {threads}": team,
        f"{auto.workers} model threads, 1 torch thread each": auto,
    }


def run(
    n_items: int,
    batch_sizes: list[int],
    device: str,
    feedback_window: int | None = None,
    precisions: tuple[str, ...] = ("fp32",),
    min_s: float = 2.0,
    ensemble: int = 1,
    window_member: int = 0,
    static_columns: int = 0,
    feedback_previous: bool = False,
    compare_past: bool = False,
) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = default_model(
            Path(tmp), feedback_window, ensemble, window_member, static_columns, feedback_previous
        )
        layouts = {p: _layouts(path, device, p) for p in precisions}
    first = next(iter(layouts[precisions[0]].values()))
    work = Workload(first, n_items)
    n = work.rows
    rows = [
        ("device", str(first.device)),
        ("feedback window", str(work.cfg.feedback_window)),
        ("previous forecasts as decoder inputs", "yes" if work.cfg.feedback_previous else "no"),
        ("networks averaged (ensemble)", str(ensemble)),
        ("feed-forward window member (hidden width, 0: none)", str(window_member)),
        ("static columns (every item has attributes)", str(static_columns)),
        ("items in the closed bucket", f"{n:,}"),
    ]
    tensors = work.tensors(first.device)
    # The caller's ceiling hands back the model's own forecasts, so its messages are as long.
    instant = InstantModel(first, work.forecasts(first, max(batch_sizes)))
    for precision, b in ((p, b) for p in precisions for b in batch_sizes):
        b = min(b, n)
        tag = f"{precision}, batch {b:>6}"
        bare: dict[str, float] = {}
        steps: dict[str, tuple[int, float]] = {}
        for name, predictor in layouts[precision].items():
            # By turns, so that the machine's drift falls on both figures of the ratio alike.
            timed = {"bare": bare_forward(predictor, tensors, b), "step": partial(work.step, predictor, b)}
            other = f"{name}, past covariates {'whole' if predictor.split_past else 'in parts'}"
            if compare_past:
                timed[other] = partial(work.step, predictor, b, None, not predictor.split_past)
            figures = alternated(timed, n, min_s)
            bare[name] = figures["bare"]
            steps[name] = (predictor.depth, figures["step"])
            if compare_past:
                steps[other] = (predictor.depth, figures[other])
            if name == next(reversed(layouts[precision])):  # the service's default
                split = work.parts(predictor, b)
            predictor.close()  # one layout's threads at a time, as the service runs one predictor
        if precision == precisions[0]:  # the model's precision is nothing to an instant model
            over_instant = {"in parts": partial(work.step, instant, b)}
            if compare_past:
                over_instant["whole"] = partial(work.step, instant, b, None, False)
            ceiling = alternated(over_instant, n, min_s / 2, rounds=2)
            instant.close()
        best = max(bare.values())
        for name, figure in bare.items():
            rows.append((f"{tag}: bare forward, {name}", f"{figure:,.0f} forecasts/s"))
        for name, (depth, figure) in steps.items():
            rows.append(
                (
                    f"{tag}: step, {name} ({depth} queued)",
                    f"{figure:,.0f} forecasts/s (ratio {figure / best:.2f})",
                )
            )
        if precision == precisions[0]:
            for form, figure in ceiling.items():
                rows.append(
                    (
                        f"{tag}: the caller's ceiling (the step over an instant model, as on a GPU), "
                        f"past covariates {form}",
                        f"{figure:,.0f} forecasts/s",
                    )
                )
        rows.append(
            (
                f"{tag}: step's parts, µs per forecast",
                " / ".join(f"{k} {v:.2f}" for k, v in split.items()),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--items", type=positive_int, default=20_000, help="items in the closed bucket (default: 20000)"
    )
    p.add_argument(
        "--batch-sizes",
        type=positive_int_list,
        default="256,1024,4096,16384",
        help="comma-separated model batch sizes, one row group each (default: 256,1024,4096,16384)",
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when torch sees a GPU"
    )
    p.add_argument(
        "--feedback-window",
        type=int,
        default=None,
        help="scored buckets the model attends over (default: its own)",
    )
    p.add_argument(
        "--precisions",
        type=precision_list,
        default="fp32",
        help="comma-separated dtypes the model's layers compute in: fp32, bf16, fp16 (default: fp32)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="minimum time per figure, in four windows taken by turns with the other figure (default: 2)",
    )
    p.add_argument(
        "--ensemble", type=positive_int, default=1, help="an ensemble of this many networks (default: 1)"
    )
    p.add_argument(
        "--window-member",
        type=non_negative_int,
        default=0,
        help="add a feed-forward window member with hidden layers this wide (default: 0, none)",
    )
    p.add_argument(
        "--static-columns",
        type=non_negative_int,
        default=0,
        help="static columns of the model (store, category, ...), every item with attributes (default: 0)",
    )
    p.add_argument(
        "--feedback-previous",
        action="store_true",
        help="the model's decoder reads each horizon's previous forecast, as weekly models do "
        "(default: off, as daily models)",
    )
    p.add_argument(
        "--compare-past-covariates",
        action="store_true",
        help="also time the step with the past covariates handed to the model the other way (in "
        "parts for the device to join, or whole), by turns with the rest (default: off)",
    )
    a = p.parse_args(argv)
    rows = run(
        a.items,
        a.batch_sizes,
        a.device,
        a.feedback_window,
        a.precisions,
        a.seconds,
        a.ensemble,
        a.window_member,
        a.static_columns,
        a.feedback_previous,
        a.compare_past_covariates,
    )
    print(table(rows, f"Inference ({machine()}, {torch.get_num_threads()} threads)"))


if __name__ == "__main__":
    main()
