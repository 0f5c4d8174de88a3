"""Training speed: an ensemble's MQ-CNNs one after another or side by side on the CPU.

Trains the same ensemble of ``--members`` MQ-CNNs (no window member, no feedback stage, so that
only the networks' own steps count) in three ways, each for ``--minutes`` per member: one after
another on one torch thread, one after another on all of torch's threads, and side by side with
one thread each (``TrainConfig.member_threads``, the default on a CPU). Each takes the ensemble's
members x minutes of the clock, so the figures to compare are the training steps all members
made per second and the epochs each reached. Accuracy is the backtest's job.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from bench.common import add_history_argument, machine, table
from model.history import read_history
from model.network import default_args_for
from model.train import TrainConfig, train


def run(data: Path, minutes: float, members: int, seed: int) -> list[tuple[str, str]]:
    history = read_history(data)
    args = dataclasses.replace(
        default_args_for(history.freq), n_static=len(history.static), ensemble=members, window_member=0
    )
    cores = torch.get_num_threads()
    rows = [
        ("data", f"{data.name}: {history.n_items:,} items x {history.n_buckets} buckets"),
        ("ensemble", f"{members} MQ-CNNs, {minutes:g} min each"),
    ]
    ways = [
        ("one after another, 1 thread", 1, 1),
        (f"one after another, {cores} threads", cores, 1),
        (f"side by side, {min(members, cores)} at once, 1 thread each", cores, None),
    ]
    for label, threads, member_threads in ways:
        cfg = TrainConfig(
            max_minutes=minutes,
            seed=seed,
            threads=threads,
            member_threads=member_threads,
            feedback_stages=0,
            calibrate=False,
        )
        try:
            _, report = train(history, args, cfg, progress=sys.stderr.isatty())
        finally:
            torch.set_num_threads(cores)
        steps = sum(m["steps"] for m in report["members"])
        rows.append(
            (
                label,
                f"{steps / report['seconds']:,.1f} steps/s ({steps:,} steps in {report['seconds']} s); "
                f"{report['epochs_run'] / members:.1f} epochs per network; val wQL {report['val_wql']:.4f}",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_history_argument(p)
    p.add_argument("--minutes", type=float, default=0.5, help="training budget per member (default: 0.5)")
    p.add_argument("--members", type=int, default=2, help="MQ-CNNs in the ensemble (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.members < 2 or a.minutes <= 0:
        p.error("--members must be >= 2 and --minutes > 0")
    rows = run(a.data, a.minutes, a.members, a.seed)
    print(table(rows, f"Training ({machine()})"))


if __name__ == "__main__":
    main()
