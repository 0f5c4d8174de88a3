"""Scale and memory: state bytes per item with 1M items in one process, and a full bucket roll.

A roll is what closing a day means for a partition: zero-fill every item, score the ledger, gather
every item's window, forecast all of them in model batches through the service's pipeline, record
the forecasts and encode the messages (the producer is left out: the broker's speed is not the
state's).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import default_model, machine, table
from bench.inference import service_step
from model.export import feedback_previous_of, feedback_window_of
from state.config import StateConfig
from state.partition import PartitionState
from stream.config import positive_int
from stream.inference import PRECISIONS, Predictor
from stream.inputs import StaticTable
from stream.publish import ForecastFormat

DAY = 86_400_000


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def state_bytes(s: PartitionState) -> tuple[int, int]:
    """(bytes the arrays hold at their capacity, bytes the same arrays need for exactly n items)."""
    arrays = [
        s.qty,
        s.price,
        s.first_bucket,
        s.last_sale,
        s.last_price,
        s.ledger.forecasts,
        s.ledger.origin,
        s.ledger.feedback,
    ]
    held = sum(a.nbytes for a in arrays)
    exact = sum(a[: s.n_items].nbytes for a in arrays)
    return held, exact


def run(n_items: int, batch: int, device: str = "auto", precision: str = "fp32") -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor.load(default_model(Path(tmp)), device, precision)
    predictor.warm_up(min(batch, n_items))
    meta = predictor.meta
    cfg = StateConfig(
        context_length=meta["context_length"],
        horizons=meta["horizons"],
        quantiles=tuple(meta["quantiles"]),
        feedback_window=feedback_window_of(meta),
        feedback_previous=feedback_previous_of(meta),
    )
    ids = np.array([f"item-{i:07d}" for i in range(n_items)], dtype=object)
    rss0 = _rss_bytes()
    s = PartitionState(cfg)
    t0 = time.perf_counter()
    s.ingest(ids, np.full(n_items, 10 * DAY + 3_600_000), np.ones(n_items), np.full(n_items, 2.0))
    t_ingest = time.perf_counter() - t0
    rss1 = _rss_bytes()
    held, exact = state_bytes(s)

    s.ingest(ids[:1], np.array([11 * DAY + 3_600_000]), np.ones(1), np.ones(1))
    t0 = time.perf_counter()
    closed = None
    while s.closable() is not None:
        c = s.close_next()
        closed = c if c.rows.size else closed
    t_close = time.perf_counter() - t0
    assert closed is not None
    fmt = ForecastFormat("D", predictor.version, cfg.quantiles, cfg.horizons)
    t0 = time.perf_counter()
    service_step(predictor, s, closed, fmt, StaticTable((), 1024), batch)
    t_forecast = time.perf_counter() - t0
    per_item = (rss1 - rss0) / n_items
    return [
        ("items", f"{n_items:,} in one partition, context {cfg.context_length}, {cfg.horizons} horizons"),
        ("model", f"{predictor.device}, {predictor.precision}, batch {batch:,}"),
        ("state arrays, exact (raw) bytes per item", f"{exact / n_items:,.0f}"),
        ("state arrays at capacity, bytes per item", f"{held / n_items:,.0f} ({held / exact:.2f}x raw)"),
        (
            "process memory growth per item (arrays + index)",
            f"{per_item:,.0f} ({per_item * n_items / exact:.2f}x raw)",
        ),
        ("first events of all items (ingest)", f"{t_ingest:.1f} s"),
        ("bucket roll: close (zero-fill, score, gather)", f"{t_close:.1f} s"),
        (
            f"bucket roll: forecast, ledger, JSON (service pipeline, {predictor.workers} model threads)",
            f"{t_forecast:.1f} s ({closed.rows.size / t_forecast:,.0f} forecasts/s)",
        ),
        ("bucket roll total (target < 60 s)", f"{t_close + t_forecast:.1f} s"),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", type=positive_int, default=1_000_000, help="items (default: 1000000)")
    p.add_argument("--batch", type=positive_int, default=1024, help="rows per model call (default: 1024)")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when torch sees a GPU"
    )
    p.add_argument(
        "--precision", choices=tuple(PRECISIONS), default="fp32", help="the layers' dtype (default: fp32)"
    )
    a = p.parse_args(argv)
    print(table(run(a.items, a.batch, a.device, a.precision), f"Scale ({machine()})"))


if __name__ == "__main__":
    main()
