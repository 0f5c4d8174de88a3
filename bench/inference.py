"""Inference: item-forecasts/s of the whole micro-batch step against the bare TorchScript forward.

The step is what the service does with a closed bucket: assemble the inputs (features, calendar),
run the model in batches, record the forecasts in the ledger and encode the forecast messages. It
is measured one batch at a time (as the service runs it on a CPU) and pipelined (as on a GPU: the
model works on the next batch while the previous one is recorded and encoded). The bare figure
runs only the scripted forward, over ready tensors of the same rows in batches of the same size, on
the same model thread, in the same run.
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

from bench.common import default_model, machine, precision_list, table
from model.export import feedback_window_of
from state.config import StateConfig
from state.partition import ClosedBucket, PartitionState
from stream.batcher import ForecastRequest, chunks, cut_at_batches
from stream.inference import Predictor
from stream.inputs import StaticTable, inputs_for
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
    fn()  # warm-up (twice: the TorchScript executor optimises at its second call)
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        fn()
        n += 1
    return n * rows / (time.perf_counter() - t0)


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
        )
        self.state, self.closed = _closed_bucket(n_items, self.cfg)
        self.rows = self.closed.rows.size
        self.statics = StaticTable((), 1024)
        self.fmt = ForecastFormat("D", predictor.version, self.cfg.quantiles, self.cfg.horizons)

    def tensors(self, device: torch.device) -> list[torch.Tensor]:
        """The model's inputs for every row, ready on ``device`` (for the bare forward)."""
        ready = inputs_for(self.closed, "D", self.cfg.horizons, self.statics)
        return [
            torch.from_numpy(np.ascontiguousarray(getattr(ready, f))).to(device)
            for f in ("target", "observed", "past_cov", "future_cov", "static", "feedback")
        ]

    def _publish(self, piece: ClosedBucket, values: np.ndarray) -> None:
        self.state.record_forecasts(piece.bucket, piece.rows, values)
        encode_forecasts(self.fmt, piece.item_ids, piece.bucket, values, 0)

    def step(self, predictor: Predictor, batch: int, depth: int = 1) -> None:
        """The service's own path: pieces of one model batch, each published when it is done."""
        pieces = cut_at_batches([ForecastRequest(0, self.closed, 0.0, 0.0)], batch)
        inputs = inputs_for(self.closed, "D", self.cfg.horizons, self.statics)
        out = np.empty((self.rows, self.cfg.horizons, len(self.cfg.quantiles)), dtype=np.float32)
        forecast_pipelined(
            predictor.submit,
            inputs,
            out,
            batch,
            [p.rows for _, p in pieces],
            lambda i, values: self._publish(pieces[i][1].closed, values),
            depth=depth,
        )

    def parts(self, predictor: Predictor, batch: int, rounds: int = 3) -> dict[str, float]:
        """µs per forecast of each part of the step, run one after another (best of ``rounds``):
        input assembly, the model (batches through the predictor, copies included), the ledger and
        the JSON of the messages."""
        best: dict[str, float] = {}
        for _ in range(rounds):
            t0 = time.perf_counter()
            inputs = inputs_for(self.closed, "D", self.cfg.horizons, self.statics)
            t1 = time.perf_counter()
            out = np.empty((self.rows, self.cfg.horizons, len(self.cfg.quantiles)), dtype=np.float32)
            for start, stop in chunks(self.rows, batch):
                out[start:stop] = predictor.predict(inputs.slice(start, stop))
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
    """The scripted forward alone over ready ``tensors``, ``batch`` rows a call, on the model's
    thread like the service's forwards (one torch thread team)."""
    n = tensors[0].shape[0]

    def forward() -> None:
        # The same rows as the step, batch by batch: the model reads as much fresh memory.
        with torch.inference_mode():
            for start, stop in chunks(n, batch):
                predictor.module(*(t[start:stop] for t in tensors))
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()

    return lambda: predictor.on_model_thread(forward).result()


def run(
    n_items: int,
    batch_sizes: list[int],
    device: str,
    feedback_window: int | None = None,
    precisions: tuple[str, ...] = ("fp32",),
    min_s: float = 2.0,
) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = default_model(Path(tmp), feedback_window)
        predictors = {p: Predictor.load(path, device, p) for p in precisions}
    first = predictors[precisions[0]]
    work = Workload(first, n_items)
    n = work.rows
    rows = [
        ("device", str(first.device)),
        ("feedback window", str(work.cfg.feedback_window)),
        ("items in the closed bucket", f"{n:,}"),
    ]
    tensors = work.tensors(first.device)
    for (precision, predictor), b in ((pp, b) for pp in predictors.items() for b in batch_sizes):
        b = min(b, n)
        tag = f"{precision}, batch {b:>6}"
        bare_rate = rate(bare_forward(predictor, tensors, b), n, min_s)
        seq_rate = rate(partial(work.step, predictor, b, 1), n, min_s)
        pipe_rate = rate(partial(work.step, predictor, b, 2), n, min_s)
        split = work.parts(predictor, b)
        rows.append((f"{tag}: bare forward", f"{bare_rate:,.0f} forecasts/s"))
        rows.append(
            (
                f"{tag}: step's parts, µs per forecast",
                " / ".join(f"{k} {v:.2f}" for k, v in split.items()),
            )
        )
        rows.append(
            (
                f"{tag}: step, one batch at a time",
                f"{seq_rate:,.0f} forecasts/s (ratio {seq_rate / bare_rate:.2f})",
            )
        )
        rows.append(
            (
                f"{tag}: step, pipelined (2 queued)",
                f"{pipe_rate:,.0f} forecasts/s (ratio {pipe_rate / bare_rate:.2f})",
            )
        )
    for predictor in predictors.values():
        predictor.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--batch-sizes", default="256,1024,4096,16384")
    p.add_argument("--device", default="auto")
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
    p.add_argument("--seconds", type=float, default=2.0, help="minimum time per figure (default: 2)")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.batch_sizes.split(",")]
    rows = run(a.items, sizes, a.device, a.feedback_window, a.precisions, a.seconds)
    print(table(rows, f"Inference ({machine()}, {torch.get_num_threads()} threads)"))


if __name__ == "__main__":
    main()
