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
from pathlib import Path

import numpy as np
import torch

from bench.common import default_model, machine, table
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


def _rate(fn, rows: int, min_s: float = 2.0) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        fn()
        n += 1
    return n * rows / (time.perf_counter() - t0)


def run(
    n_items: int, batch_sizes: list[int], device: str, feedback_window: int | None = None
) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor.load(default_model(Path(tmp), feedback_window), device)
    meta = predictor.meta
    cfg = StateConfig(
        context_length=meta["context_length"],
        horizons=meta["horizons"],
        quantiles=tuple(meta["quantiles"]),
        feedback_window=feedback_window_of(meta),
    )
    state, closed = _closed_bucket(n_items, cfg)
    statics = StaticTable((), 1024)
    fmt = ForecastFormat("D", predictor.version, cfg.quantiles, cfg.horizons)
    rows = [
        ("device", str(predictor.device)),
        ("feedback window", str(cfg.feedback_window)),
        ("items in the closed bucket", f"{closed.rows.size:,}"),
    ]
    n = closed.rows.size
    ready = inputs_for(closed, "D", cfg.horizons, statics)
    tensors = [
        torch.from_numpy(np.ascontiguousarray(getattr(ready, f))).to(predictor.device)
        for f in ("target", "observed", "past_cov", "future_cov", "static", "feedback")
    ]
    for b in batch_sizes:
        b = min(b, n)

        def forward(b: int = b, tensors: list[torch.Tensor] = tensors) -> None:
            # The same rows as the step, batch by batch: the model reads as much fresh memory.
            with torch.inference_mode():
                for start, stop in chunks(n, b):
                    predictor.module(*(t[start:stop] for t in tensors))
            if predictor.device.type == "cuda":
                torch.cuda.synchronize()

        def bare(forward=forward) -> None:
            # On the model's thread, like the service's forwards (one torch thread team).
            predictor.on_model_thread(forward).result()

        def publish(piece: ClosedBucket, values: np.ndarray) -> None:
            state.record_forecasts(piece.bucket, piece.rows, values)
            encode_forecasts(fmt, piece.item_ids, piece.bucket, values, 0)

        def step(b: int = b, depth: int = 1) -> None:
            # The service's own path: pieces of one model batch, each published when it is done.
            pieces = cut_at_batches([ForecastRequest(0, closed, 0.0, 0.0)], b)
            batch = inputs_for(closed, "D", cfg.horizons, statics)
            out = np.empty((n, cfg.horizons, len(cfg.quantiles)), dtype=np.float32)
            forecast_pipelined(
                predictor.submit,
                batch,
                out,
                b,
                [p.rows for _, p in pieces],
                lambda i, values: publish(pieces[i][1].closed, values),
                depth=depth,
            )

        bare_rate = _rate(bare, n)
        seq_rate = _rate(lambda: step(depth=1), n)
        pipe_rate = _rate(lambda: step(depth=2), n)
        rows.append((f"batch {b:>6}: bare forward", f"{bare_rate:,.0f} forecasts/s"))
        rows.append(
            (
                f"batch {b:>6}: step, one batch at a time",
                f"{seq_rate:,.0f} forecasts/s (ratio {seq_rate / bare_rate:.2f})",
            )
        )
        rows.append(
            (
                f"batch {b:>6}: step, pipelined (2 queued)",
                f"{pipe_rate:,.0f} forecasts/s (ratio {pipe_rate / bare_rate:.2f})",
            )
        )
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
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.batch_sizes.split(",")]
    rows = run(a.items, sizes, a.device, a.feedback_window)
    print(table(rows, f"Inference ({machine()}, {torch.get_num_threads()} threads)"))


if __name__ == "__main__":
    main()
