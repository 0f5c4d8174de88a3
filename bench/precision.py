"""Precision: what computing the model's layers in bfloat16 or float16 costs in accuracy.

Trains one MQ-CNN on a history file (a short budget; the bundled retail data by default), then
forecasts the held-out targets of its validation split with the same weights in each precision,
the way the service would serve them (``--precision``): layers in the reduced dtype, inputs, item
scales and quantiles in float32. Same weights and same inputs, so the differences are the
precision's alone, free of the run-to-run noise of training. Speed is ``bench inference``'s job.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from bench.common import add_history_argument, machine, precision_list, table
from model.history import read_history
from model.metrics import coverage, weighted_quantile_loss
from model.network import default_args_for
from model.train import TrainConfig, held_out_forecasts, train
from stream.inference import PRECISIONS, pick_device


def run(
    data: Path, minutes: float, device: str, precisions: tuple[str, ...], seed: int
) -> list[tuple[str, str]]:
    history = read_history(data)
    args = dataclasses.replace(default_args_for(history.freq), n_static=len(history.static))
    dev = pick_device(device)
    cfg = TrainConfig(max_minutes=minutes, seed=seed, device=str(dev))
    model, report = train(history, args, cfg, progress=sys.stderr.isatty())
    v = int(report["validation_buckets"])
    q = np.asarray(args.quantiles)
    rows = [
        ("data", f"{data.name}: {history.n_items:,} items x {history.n_buckets} buckets"),
        ("device", str(dev)),
        ("training", f"{report['epochs_run']} epochs in {report['seconds']} s (seed {seed})"),
    ]
    reference: np.ndarray | None = None
    for precision in precisions:
        served = copy.deepcopy(model).to(device=dev, dtype=PRECISIONS[precision])
        pred, y = held_out_forecasts(served, history, args, v, dev)
        per_q, wql = weighted_quantile_loss(y, pred, q)
        if reference is None:
            reference = pred
        diff = np.linalg.norm(pred - reference) / max(np.linalg.norm(reference), 1e-12)
        worst = np.max(np.abs(pred - reference) / np.maximum(np.abs(reference), 1.0))
        per_q_text = ", ".join(f"P{100 * qq:g} {x:.4f}" for qq, x in zip(q, per_q, strict=True))
        rows.append(
            (
                f"{precision}: held-out wQL ({y.size:,} cells)",
                f"{wql:.4f} ({per_q_text}); P{100 * q[0]:g}-P{100 * q[-1]:g} coverage "
                f"{coverage(y, pred[:, 0], pred[:, -1]):.3f}",
            )
        )
        rows.append(
            (
                f"{precision}: forecasts against {precisions[0]}",
                f"relative L2 difference {diff:.2e}; largest {worst:.2e} of max(|forecast|, 1)",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_history_argument(p)
    p.add_argument("--minutes", type=float, default=2.0, help="training budget (default: 2)")
    p.add_argument("--device", default="auto", help="where to train and forecast (default: auto)")
    p.add_argument(
        "--precisions",
        type=precision_list,
        default="fp32,bf16,fp16",
        help="comma-separated, the reference first (default: fp32,bf16,fp16)",
    )
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    a = p.parse_args(argv)
    rows = run(a.data, a.minutes, a.device, a.precisions, a.seed)
    print(table(rows, f"Precision ({machine()}, {torch.get_num_threads()} threads)"))


if __name__ == "__main__":
    main()
