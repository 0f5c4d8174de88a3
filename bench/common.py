"""What the benchmarks share: a broker to talk to, a model to run, a table to print."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import queue
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np
import orjson


@contextlib.contextmanager
def bootstrap_server() -> Iterator[str]:
    """``MQCAST_BOOTSTRAP`` if set, else a local broker for the duration."""
    if os.environ.get("MQCAST_BOOTSTRAP"):
        yield os.environ["MQCAST_BOOTSTRAP"]
        return
    from stream.broker import BrokerConfig, LocalBroker

    with LocalBroker(BrokerConfig(heap="1g")) as broker:
        yield broker.bootstrap


def machine() -> str:
    """One line naming the machine the figures come from."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def synthetic_events(n: int, n_items: int, days: int, seed: int = 0) -> list[bytes]:
    """``n`` encoded sales events over ``n_items`` items and ``days`` days, in time order."""
    rng = np.random.default_rng(seed)
    t0 = 1_600_000_000_000 - 1_600_000_000_000 % 86_400_000
    ms = np.sort(rng.integers(0, days * 86_400_000, n)) + t0
    items = rng.integers(0, n_items, n)
    qty = rng.integers(1, 5, n)
    return [
        orjson.dumps({"item_id": f"item-{i}", "ts": int(t), "qty": int(q), "price": 2.5})
        for i, t, q in zip(items.tolist(), ms.tolist(), qty.tolist(), strict=True)
    ]


def table(rows: list[tuple[str, str]], title: str) -> str:
    """A two-column Markdown table."""
    width = max(len(r[0]) for r in rows)
    lines = [f"### {title}", "", f"| {'figure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


def default_model(
    tmp: Path,
    feedback_window: int | None = None,
    ensemble: int = 1,
    window_member: int = 0,
    static_columns: int = 0,
    feedback_previous: bool = False,
) -> Path:
    """An untrained default daily model exported as a trained one is (speed does not depend on weights);
    ``feedback_window`` overrides the default's, ``ensemble`` makes it an ensemble of that many
    networks, ``window_member`` adds a feed-forward window member of that width, ``static_columns``
    gives it that many static columns (``static_0``, ...), ``feedback_previous`` makes its decoder
    read the previous forecasts (as weekly models do)."""
    import dataclasses

    from model.export import export_model
    from model.features import DAY_OF_MONTH, reads_day_of_month
    from model.network import build_network, default_args_for, ignore_calendar_columns
    from model.prune import served_form
    from stream.training import feedback_names

    args = default_args_for("D")
    if feedback_window is not None:
        args = dataclasses.replace(args, feedback_window=feedback_window)
    args = dataclasses.replace(
        args,
        ensemble=ensemble,
        window_member=window_member,
        n_static=static_columns,
        feedback_previous=feedback_previous,
    )
    path = tmp / "bench-model.pt"
    model = build_network(args).eval()
    # As training leaves a daily network (the day of the month ignored), and exported as it is.
    if not reads_day_of_month("auto", "D"):
        ignore_calendar_columns(model, DAY_OF_MONTH)
    model, args, past, future = served_form(model, args)
    meta = {
        "freq": "D",
        "features": {"past": past, "future": future, "feedback": feedback_names(args)},
        "static_columns": [f"static_{k}" for k in range(static_columns)],
    }
    export_model(model, args, path, meta)
    return path


def positive_int_list(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers, in order."""
    from stream.config import positive_int

    return [positive_int(x) for x in text.split(",")]


#: The bundled retail days, the history of the benchmarks that train when ``--data`` is not given.
BUNDLED_HISTORY = Path(__file__).resolve().parent.parent / "data" / "online_retail_uci" / "daily.csv.gz"


def history_file(text: str) -> Path:
    """An argparse type: the path of an existing history file."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file {path}")
    return path


def add_history_argument(p: argparse.ArgumentParser) -> None:
    """``--data FILE``, a history file, the bundled retail days by default."""
    p.add_argument(
        "--data",
        type=history_file,
        default=BUNDLED_HISTORY,
        help="history file (default: the bundled retail days)",
    )


def precision_list(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated precisions (``stream.inference.PRECISIONS`` keys), in order."""
    from stream.inference import PRECISIONS

    chosen = tuple(x.strip() for x in text.split(","))
    unknown = [x for x in chosen if x not in PRECISIONS]
    if unknown:
        choices = ", ".join(PRECISIONS)
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)} (choose from {choices})")
    return chosen


def gather(results: queue.Queue, members: list[BaseProcess], timeout_s: float) -> list:
    """One message from each of ``members`` through ``results``, in arrival order. A member that
    dies first, or silence for ``timeout_s``, stops the benchmark with a message saying so."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < len(members):
        try:
            got.append(results.get(timeout=1.0))
        except queue.Empty:
            failed = [m.exitcode for m in members if m.exitcode not in (None, 0)]
            if failed:
                raise SystemExit(
                    f"{len(failed)} member process(es) failed (exit code {failed[0]}); see above"
                ) from None
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"no word from {len(members) - len(got)} member(s) in {timeout_s:.0f} s"
                ) from None
    return got
