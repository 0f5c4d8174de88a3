"""Processes: several service processes sharing one device, as a consumer group's members on one
machine share it.

One process's step (gather the inputs, run the model, record, encode) is bound by its CPU work
once the model runs on a GPU: the device waits for that process most of the time. The service
scales out by partitions, so the way to fill a GPU is several members of the group on its machine,
each with its partitions and its own cores. Each process here owns one partition whose bucket has
just closed over ``items / P`` items, starts at a common barrier and runs the step for a fixed time;
the figure is the sum of their item-forecasts/s, against one process's bare forward of all the rows
at the same batch size, measured first in the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import torch

from bench.common import default_model, gather, machine, table
from bench.inference import Workload, bare_forward, rate
from stream.inference import PRECISIONS, Predictor, default_workers, pick_device


def _member(
    path: str,
    device: str,
    precision: str,
    items: int,
    batch: int,
    seconds: float,
    threads: int,
    go: Event,
    results: mp.Queue,
) -> None:
    """One group member: its own model, its own partition; says it is ready, waits for ``go``, then
    steps until ``seconds`` have passed."""
    torch.set_num_threads(threads)
    predictor = Predictor.load(Path(path), device, precision)
    work = Workload(predictor, items)
    for _ in range(2):  # warm-up: the executor's optimisation, the pinned buffers, the kernels
        work.step(predictor, batch)
    results.put("ready")
    go.wait()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        work.step(predictor, batch)
        n += work.rows
    results.put(n / (time.perf_counter() - t0))
    predictor.close()


def run(
    n_items: int, processes: list[int], batch: int, device: str, precision: str, seconds: float
) -> list[tuple[str, str]]:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        path = default_model(Path(tmp))
        predictor = Predictor.load(path, device, precision)
        work = Workload(predictor, n_items)
        bare = rate(bare_forward(predictor, work.tensors(predictor.device), batch), work.rows, seconds)
        predictor.close()
        rows = [
            ("device", f"{predictor.device}, {precision}, batch {batch:,}"),
            ("items, all processes together", f"{work.rows:,}"),
            (f"bare forward, one process, {predictor.workers} model thread(s)", f"{bare:,.0f} forecasts/s"),
        ]
        # CUDA cannot be initialised again in a forked child.
        ctx = mp.get_context("spawn")
        for p in processes:
            threads = max(1, cores // p)
            go, results = ctx.Event(), ctx.Queue()
            members = [
                ctx.Process(
                    target=_member,
                    args=(
                        str(path),
                        device,
                        precision,
                        n_items // p,
                        batch,
                        seconds,
                        threads,
                        go,
                        results,
                    ),
                    daemon=True,  # ended with the benchmark if it stops early
                )
                for _ in range(p)
            ]
            for m in members:
                m.start()
            gather(results, members, 600)  # every member ready: start them together
            go.set()
            rates = gather(results, members, 600)
            for m in members:
                m.join()
            total = sum(rates)
            workers = default_workers(pick_device(device), threads)  # each member's, as the service's
            who = f"{p} process{'es' if p > 1 else ''}, {threads} torch / {workers} model thread(s) each"
            rows.append(
                (
                    f"step, {who}",
                    f"{total:,.0f} forecasts/s (ratio {total / bare:.2f})",
                )
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", type=int, default=65_536, help="items over all processes (default: 65536)")
    p.add_argument("--processes", default="1,2", help="comma-separated process counts (default: 1,2)")
    p.add_argument(
        "--batch", type=int, default=None, help="rows per model call (default: 16384 on a GPU, 1024 on a CPU)"
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when torch sees a GPU"
    )
    p.add_argument(
        "--precision", choices=tuple(PRECISIONS), default="fp32", help="the layers' dtype (default: fp32)"
    )
    p.add_argument("--seconds", type=float, default=3.0, help="time each figure runs (default: 3)")
    a = p.parse_args(argv)
    counts = [int(x) for x in a.processes.split(",")]
    if any(c < 1 for c in counts):
        p.error("--processes: counts must be >= 1")
    batch = a.batch or (16_384 if pick_device(a.device).type == "cuda" else 1024)
    rows = run(a.items, counts, batch, a.device, a.precision, a.seconds)
    print(table(rows, f"Processes sharing one device ({machine()})"))


if __name__ == "__main__":
    main()
